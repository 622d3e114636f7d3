"""Issue 18's adversarial cases, rerun through the real CLI on tiny data: each ends in a result or one clear
line (exit 2), never a traceback, a hang (each run is bounded by a timeout) or a silent wrong answer.
Memory stays small: 600 x 16 vectors; the address-space case runs under ``ulimit -v 8000000``."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.slow  # several `latent` processes, each with a private Ray

REPO = Path(__file__).resolve().parent.parent
ROWS, DIM = 600, 16
MAP = ("map.landmarks=300", "quality.sample=300", "quality.queries=100", "quality.reference=false", "image=false")
NOISE = ("Traceback", "terminate called", "core dumped", "\x1b[")  # a traceback, a C++ abort, Ray's ANSI lines


def write(path: Path, bad: bool = False) -> Path:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((ROWS, DIM)).astype("float32")
    x[:, :4] += rng.integers(0, 6, (ROWS, 1)) * 3
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    if bad:
        x[10], x[20:23] = np.nan, 0
    path.mkdir(parents=True)
    for s, part in enumerate(np.array_split(np.arange(ROWS), 2)):
        table = pa.table(
            {
                "id": [f"r{i}" for i in part],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[part].reshape(-1)), DIM),
            }
        )
        pq.write_table(table, path / f"p{s}.parquet")
    return path


def latent(*args: str, limit_kib: int | None = None, timeout: float = 600) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_DEDUP_LOGS": "0"}

    def limit() -> None:
        if limit_kib:
            resource.setrlimit(resource.RLIMIT_AS, (limit_kib * 1024, resource.RLIM_INFINITY))

    command = [sys.executable, "-m", "pipeline.cli", *args]
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=limit
    )


def finish(run: subprocess.Popen, timeout: float = 600) -> tuple[int, str]:
    try:
        out, _ = run.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        run.communicate()
        pytest.fail(f"hung: {run.args}")
    assert not any(n in out for n in NOISE), out
    return run.returncode, out


def tree(path: Path) -> list[tuple[str, bytes]]:
    return sorted((str(p.relative_to(path)), p.read_bytes() if p.is_file() else b"") for p in path.rglob("*"))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write(tmp_path_factory.mktemp("adv") / "c")


def test_two_concurrent_creates_of_one_map_do_not_both_succeed(data, tmp_path):
    out = tmp_path / "m"
    runs = [latent("map", f"input.path={data}", f"output.path={out}", f"map.seed={s}", *MAP) for s in (0, 1)]
    codes = [finish(r)[0] for r in runs]
    assert sorted(codes) == [0, 2] and (out / "map.json").is_file(), codes
    assert not list(tmp_path.glob(".m.tmp-map-*"))


def test_an_output_inside_the_input_is_refused_for_every_command(data, tmp_path):
    before = tree(data)
    for args in (
        ("map", f"input.path={data}", f"output.path={data}/inner", *MAP),
        ("index", f"input.path={data}", f"index.path={data}/index"),
        ("embed", f"input.path={data}", f"output.path={data}"),
    ):
        code, out = finish(latent(*args))
        assert code == 2 and "inside input.path" in out and len(out.strip().splitlines()) == 1, out
    assert tree(data) == before  # nothing written, no staging folder left


def test_values_as_typed(data, tmp_path):
    code, out = finish(latent("index", f"input.path={data}", f"index.path={tmp_path}/ivf", "index.factory=IVF8,Flat"))
    assert code == 0, out
    code, out = finish(latent("path", f"index.path={tmp_path}/ivf", "from=abc#0", "to=r1"))
    assert code == 2 and "abc#0" in out and "start=" not in out, out


def test_nan_and_zero_rows_go_to_errors_and_map_json_is_strict_json(tmp_path):
    bad = write(tmp_path / "b", bad=True)
    code, out = finish(latent("map", f"input.path={bad}", f"output.path={tmp_path}/mb", *MAP))
    assert code == 0 and "4 rows not placed" in out, out
    errors = pq.read_table(tmp_path / "mb" / "_errors").column("id").to_pylist()
    assert sorted(errors) == ["r10", "r20", "r21", "r22"]

    def no_constant(name: str) -> None:
        raise AssertionError(f"map.json holds {name}")

    json.loads((tmp_path / "mb" / "map.json").read_text(), parse_constant=no_constant)


def test_bad_paths_and_keys_are_one_line(data, tmp_path):
    (tmp_path / "file").write_text("x")
    for extra, expected in (
        ((f"output.path={tmp_path}/file",), "is a file"),
        ((f"output.path={tmp_path}/o", "map.levels=1000"), "map.levels=1000"),
        ((f"output.path={tmp_path}/o", "quality.sample=1e12"), "quality.sample"),
    ):
        code, out = finish(latent("map", f"input.path={data}", *extra))
        assert code == 2 and expected in out and len(out.strip().splitlines()) == 1, out


def test_map_under_an_address_space_limit_works_or_stops_fast_with_one_line(data, tmp_path):
    started = time.monotonic()
    code, out = finish(latent("map", f"input.path={data}", f"output.path={tmp_path}/m", *MAP, limit_kib=8_000_000))
    seconds = time.monotonic() - started
    assert code == 0 or (seconds < 180 and code == 2 and "ulimit -v" in out), (code, seconds, out)
