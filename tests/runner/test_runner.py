"""The runner's guarantees on real Ray and real files: one writer per output, stuck jobs and unwritable outputs
say why, and a rerun after a fault finishes the work with each row once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from index.helpers import build, dataset, vectors

from pipeline.cli import compose
from pipeline.errors import LatentError
from pipeline.runner import watchdog
from pipeline.runtime import ray_started_here
from pipeline.search.knn import run_knn

HOLD_LOCK = """
import sys, time
from pipeline.runner.output import JobOutput
output = JobOutput(sys.argv[1])
with output.lock():
    print("held", flush=True)
    time.sleep(600)
"""


@pytest.fixture(scope="module")
def knn_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner")
    base = dataset(root / "base", vectors(400, seed=2), rows_per_shard=400, dtype="float32")
    build(base, root / "idx", "index.factory=Flat")
    queries = dataset(root / "queries", vectors(600, seed=3), rows_per_shard=100, dtype="float32")
    return queries, root / "idx"


def knn(inputs, out, *extra: str):
    queries, index = inputs
    overrides = [f"input.path={queries}", f"index.path={index}", f"output.path={out}", "ray.num_cpus=2"]
    overrides += ["ray.inline_max_rows=0"]  # the Ray path (small jobs default to inline)
    return run_knn(compose("knn", [*overrides, "progress=false", "k=3", "batch_size=50", *extra]))


def query_ids(out: Path) -> list[str]:
    table = pads.dataset(str(out / "neighbors"), format="parquet").to_table(columns=["query_id"])
    return sorted(table.column("query_id").to_pylist())


EXPECTED = sorted(f"v{i}" for i in range(600))


def hold_lock(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_dead_runs_lock_is_taken_over(local_ray, knn_inputs, tmp_path, caplog):
    out = tmp_path / "out"
    holder = hold_lock(out)
    try:
        with pytest.raises(LatentError, match=rf"being written by pid {holder.pid} on host \S+, since "):
            knn(knn_inputs, out)
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: its lock file still names it
        holder.wait()
    assert not list(out.glob("neighbors/part-*"))  # refused before any work
    summary = knn(knn_inputs, out)
    assert summary.queries == 600
    assert f"pid {holder.pid}" in caplog.text and "took over the output lock" in caplog.text
    assert query_ids(out) == EXPECTED


TOO_BIG = ("resources.cpus_per_actor=2",)  # not even one 2-CPU actor beside a reader fits a 2-CPU Ray


def test_a_job_that_a_private_ray_can_never_run_is_refused_at_once_saying_why(local_ray, knn_inputs, tmp_path):
    assert ray_started_here()  # the session's Ray was started by this process: it will not grow
    with pytest.raises(LatentError, match=r"cannot run on this Ray: the stages need 3 CPUs .*the cluster has 2") as err:
        knn(knn_inputs, tmp_path / "out", *TOO_BIG, "ray.stall_timeout_s=600")
    assert "resources.cpus_per_actor=0.5" in str(err.value)  # names the keys that fix it
    assert not list((tmp_path / "out").glob("neighbors/part-*"))


def test_a_job_stuck_on_a_joined_cluster_fails_saying_why(local_ray, knn_inputs, tmp_path, monkeypatch, caplog):
    # On a joined cluster an autoscaler may add nodes: the job waits, then the watchdog stops it. The session's
    # Ray stands in for a joined cluster here (the same Ray, only the "who started it" answer differs).
    monkeypatch.setattr(watchdog, "ray_started_here", lambda: False)
    # The watchdog must not rely on the process's SIGINT handler, which a host program may have replaced (with
    # it ignored, a watchdog that simulated Ctrl-C left this job waiting forever)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(LatentError, match=r"stuck: no progress for \d+ s and nothing can be scheduled: .*CPUs"):
            knn(knn_inputs, tmp_path / "out", *TOO_BIG, "ray.stall_timeout_s=5")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert "waiting for nodes" in caplog.text
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.timeout(300)
def test_a_pool_that_holds_every_cpu_is_restarted_smaller_and_the_job_finishes(local_ray, knn_inputs, tmp_path):
    # Two 1-CPU searchers on the 2-CPU Ray hold both CPUs: no read task ever runs, and Ray Data never shrinks a
    # pool that got no input. The job waited for ever ("the stages are scheduled and still working", issue 19)
    # as after a node loss, when Ray restarts the lost actor beside the survivor's; now the watchdog sees the
    # pool starve its readers and restarts the stages with one searcher beside a reader.
    out = tmp_path / "out"
    summary = knn(knn_inputs, out, "resources.actors=2", "resources.cpus_per_actor=1", "ray.stall_timeout_s=8")
    assert summary.queries == 600
    assert query_ids(out) == EXPECTED  # every query once
    (events,) = (out / "_latent" / "runs").glob("*/events.jsonl")
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    assert [(e["event"], e["actors"]) for e in logged] == [("stages_restarted", 1)], logged
    assert "no room for a read task" in logged[0]["reason"]


def test_an_output_path_that_is_a_file_is_refused_clearly(local_ray, knn_inputs, tmp_path):
    (tmp_path / "out").write_text("not a folder")
    with pytest.raises(LatentError, match=rf"cannot write the output {tmp_path / 'out'}: a file is in the way"):
        knn(knn_inputs, tmp_path / "out")


@contextlib.contextmanager
def tmpfs(size: str, read_only: bool = False):
    """A real small filesystem (root only): full or read-only disks, for real."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path = tempfile.mkdtemp(prefix="tmpfs", dir="/tmp")
    options = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", path], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield Path(path)
    finally:
        subprocess.run(["umount", "-l", path], check=False)
        os.rmdir(path)


def test_a_read_only_output_is_refused_clearly(local_ray, knn_inputs):
    with tmpfs("1m", read_only=True) as disk, pytest.raises(LatentError, match="the filesystem is read-only") as err:
        knn(knn_inputs, disk / "out")
    assert f"cannot write the output {disk / 'out'}" in str(err.value)


def test_a_full_disk_stops_the_job_clearly_and_a_rerun_finishes_it_losing_nothing(local_ray, knn_inputs):
    with tmpfs("64k") as disk:
        out = disk / "out"
        with pytest.raises(LatentError, match=rf"cannot write the output {out}: the disk is full.*rerun the same"):
            knn(knn_inputs, out, "output.rows_per_shard=50")
        assert not (out / "_SUCCESS").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        summary = knn(knn_inputs, out, "output.rows_per_shard=50")
        assert summary.queries == 600 and summary.errors == 0
        assert query_ids(out) == EXPECTED  # every query once: nothing lost, nothing doubled


def test_a_unit_whose_rows_are_all_committed_is_marked_so_that_a_rerun_skips_it(tmp_path):
    from collections import Counter

    from pipeline.runner.execute import _mark_finished_units
    from pipeline.runner.output import READ_DIR, JobOutput, unit_marker_name

    output = JobOutput(str(tmp_path / "out"))
    output.prepare()
    reads = tmp_path / "out" / "_latent" / "units" / READ_DIR
    reads.mkdir(parents=True)
    whole, partial = unit_marker_name("shard-a.parquet"), unit_marker_name("shard-b.parquet")
    (reads / f"{whole}.attempt1").write_text("40")  # rows each read attempt emitted
    (reads / f"{partial}.attempt1").write_text("40")
    committed = Counter({f"{whole}.attempt1": 40, f"{partial}.attempt1": 39})
    _mark_finished_units(output, committed, set())
    assert output.done_units() == {whole}  # the name run_job looks up for unit "shard-a.parquet"
