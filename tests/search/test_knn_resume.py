"""A real Ctrl-C and a real `kill -9` of `latent knn`, then a rerun: each query's row written exactly once."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from index.helpers import build, dataset, vectors
from processes import kill_group, start_group

TINY_CLI = str(Path(__file__).parents[1] / "tiny_cli.py")
QUERIES = 1600


def start_knn(queries: Path, index: Path, out: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        TINY_CLI,
        "knn",
        f"input.path={queries}",
        f"index.path={index}",
        f"output.path={out}",
        "ray.num_cpus=2",
        "ray.inline_max_rows=0",  # the Ray path: what these tests are about (small jobs default to inline)
        "k=3",
        "batch_size=40",
        "output.rows_per_shard=80",
        "progress=false",
    ]
    return start_group(args)


def shards(out: Path) -> set[str]:
    return {p.name for p in (out / "neighbors").glob("part-*.parquet")}


def wait_for_shards(proc: subprocess.Popen, out: Path, at_least: int) -> None:
    deadline = time.time() + 240
    while time.time() < deadline and len(shards(out)) < at_least:
        assert proc.poll() is None, proc.stdout.read()
        time.sleep(0.1)
    assert len(shards(out)) >= at_least, "the job never committed enough shards"


@pytest.mark.slow
@pytest.mark.timeout(1800)  # three runs of a Ray job; a loaded CI machine is slow
def test_ctrl_c_then_kill_minus_nine_then_rerun_answers_every_query_once(tmp_path):
    x = vectors(2000, seed=5)
    base = dataset(tmp_path / "base", x, rows_per_shard=1000, dtype="float32")
    build(base, tmp_path / "idx", "index.factory=Flat")
    queries = dataset(tmp_path / "queries", vectors(QUERIES, seed=6), rows_per_shard=100, dtype="float32")
    out = tmp_path / "out"

    # Ctrl-C: a clear message, exit 130, no traceback
    first = start_knn(queries, tmp_path / "idx", out)
    try:
        wait_for_shards(first, out, 2)
        first.send_signal(signal.SIGINT)
        output, _ = first.communicate(timeout=120)
    finally:
        kill_group(first)
    assert first.returncode == 130, output
    assert "interrupted; rerun the same command to resume" in output
    assert "Traceback" not in output

    # kill -9 of the whole process group, mid-run
    second = start_knn(queries, tmp_path / "idx", out)
    try:
        wait_for_shards(second, out, len(shards(out)) + 3)
        deadline = time.time() + 120
        while time.time() < deadline and not list((out / "_latent" / "units" / "done").glob("*")):
            assert second.poll() is None, second.stdout.read()
            time.sleep(0.1)
    finally:
        kill_group(second)
    assert not (out / "_SUCCESS").exists()
    before = shards(out)

    third = start_knn(queries, tmp_path / "idx", out)
    try:
        output, _ = third.communicate(timeout=600)
    finally:
        kill_group(third)
    assert third.returncode == 0, output
    assert "took over the output lock" in output  # the killed run's lock, left behind, is taken over
    ids = pads.dataset(str(out / "neighbors"), format="parquet").to_table(columns=["query_id"]).column("query_id")
    assert sorted(ids.to_pylist()) == sorted(f"v{i}" for i in range(QUERIES))  # every query, none twice
    assert before <= shards(out)  # finished work was kept, not redone
    assert (out / "_SUCCESS").exists()
    finished_units = int(re.search(r"resuming: ([\d,]+) units", output).group(1).replace(",", ""))
    assert finished_units > 0  # whole units finished before the kill were skipped, not even read
