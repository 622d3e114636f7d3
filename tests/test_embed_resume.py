"""A real `kill -9` of a real embed run, then a rerun: every input embedded exactly once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from conftest import TINY_MODEL
from corpora import write_image_folder
from processes import kill_group, start_group

TINY_CLI = str(Path(__file__).parent / "tiny_cli.py")


def start_embed(corpus: Path, out: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        TINY_CLI,
        "embed",
        f"input.path={corpus}",
        f"output.path={out}",
        f"model.name={TINY_MODEL}",
        "model.pretrained=null",
        "ray.num_cpus=2",
        "ray.inline_max_rows=0",  # the Ray path: what these tests are about (small jobs default to inline)
        "output.rows_per_shard=16",
        "batch_size=8",
        "input.files_per_task=8",
        "progress=false",
    ]
    return start_group(args)


def group_alive(pgid: int, wait: float = 15.0) -> list[str]:
    """Live (non-zombie) processes of a process group, after giving them ``wait`` seconds to go."""
    deadline = time.time() + wait
    while True:
        out = subprocess.run(["ps", "-eo", "pgid=,pid=,stat=,comm="], capture_output=True, text=True).stdout
        alive = [line for line in out.splitlines() if line.split()[0] == str(pgid) and "Z" not in line.split()[2]]
        if not alive or time.time() > deadline:
            return alive
        time.sleep(0.5)


@pytest.mark.slow
def test_kill_minus_nine_then_rerun_embeds_everything_exactly_once(tmp_path):
    corpus = write_image_folder(tmp_path / "corpus", 120)
    out = tmp_path / "out"
    proc = start_embed(corpus, out)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and len(list(out.glob("part-*.parquet"))) < 2:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.2)
        committed_before_kill = len(list(out.glob("part-*.parquet")))
        assert committed_before_kill >= 2, "the job never committed a shard"
    finally:
        kill_group(proc)
    assert not group_alive(proc.pid), "processes of the killed job survived"
    assert not (out / "_SUCCESS").exists()

    rerun = start_embed(corpus, out)
    try:
        output, _ = rerun.communicate(timeout=400)
    finally:
        kill_group(rerun)
    assert rerun.returncode == 0, output
    assert "this run" in output
    assert "resuming:" in output  # says what it keeps
    # Ray's messages that the user can do nothing about are not printed (core_worker's C++ line among them)
    for noise in ("Token authentication", "received 0 inputs", "usage stats", "has constructor arguments"):
        assert noise not in output
    ids = pads.dataset(str(out), format="parquet").to_table(columns=["id"]).column("id").to_pylist()
    expected = sorted(str(p.relative_to(corpus)) for p in corpus.rglob("*.jpg"))
    assert sorted(ids) == expected  # all of them, none twice
    assert (out / "_SUCCESS").exists()
    embedded_this_run = int(output.split("rows embedded")[1].split("(")[1].split()[0].replace(",", ""))
    assert embedded_this_run < len(expected)  # the rerun resumed rather than starting over
