"""Where a job's Ray comes from: an empty ray.address is a private Ray, whatever else runs on the machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from cluster.localcluster import LocalCluster, free_ports
from index.helpers import build, dataset, vectors

TINY_CLI = str(Path(__file__).parent / "tiny_cli.py")


@pytest.fixture
def knn_inputs(tmp_path):
    base = dataset(tmp_path / "base", vectors(300, seed=1), rows_per_shard=300, dtype="float32")
    build(base, tmp_path / "idx", "index.factory=Flat")
    return base, tmp_path / "idx"


@pytest.fixture
def ray_tmpdir():
    """A Ray temp folder of our own (short: Ray's socket paths live under it), as RAY_TMPDIR."""
    path = tempfile.mkdtemp(prefix="rt", dir="/tmp")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


def run_knn_cli(queries, index, out, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    args = [sys.executable, TINY_CLI, "knn", f"input.path={queries}", f"index.path={index}", f"output.path={out}"]
    args += ["ray.num_cpus=2", "ray.inline_max_rows=0", "k=3", "progress=false"]
    clean = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**clean, **env})


def recorded_gcs(out: Path) -> str:
    (run,) = (out / "_latent" / "runs").iterdir()
    return json.loads((run / "ray.json").read_text())["gcs_address"]


@pytest.mark.slow
@pytest.mark.cluster
def test_empty_address_starts_a_private_ray_despite_ray_current_cluster(tmp_path, knn_inputs, ray_tmpdir):
    queries, index = knn_inputs
    current = ray_tmpdir / "ray" / "ray_current_cluster"  # where `ray start` records "the" cluster of the machine
    current.parent.mkdir(parents=True)
    env = {"RAY_TMPDIR": str(ray_tmpdir), "RAY_AUTH_MODE": "disabled"}

    # a stale file: it names a port where nothing listens (Ray would retry "Failed to connect to GCS")
    current.write_text(f"127.0.0.1:{free_ports(1)[0]}")
    stale = run_knn_cli(queries, index, tmp_path / "out-stale", env)
    assert stale.returncode == 0, stale.stdout + stale.stderr
    assert (tmp_path / "out-stale" / "_SUCCESS").exists()

    # another user's running cluster, named by the file
    try:
        other = LocalCluster.start(head_cpus=1, worker_cpus=None)
    except RuntimeError:  # `ray start` waits a fixed 30 s for its node: on a loaded machine, try once more
        other = LocalCluster.start(head_cpus=1, worker_cpus=None)
    try:
        current.write_text(other.address)
        done = run_knn_cli(queries, index, tmp_path / "out", env)
        assert done.returncode == 0, done.stdout + done.stderr
        # it ran on its own Ray, not the other cluster (Ray names both by the machine's address, not loopback)
        assert recorded_gcs(tmp_path / "out").rsplit(":", 1)[1] != other.address.rsplit(":", 1)[1]
        assert len(other.alive_nodes()) == 1  # and the other cluster is untouched
        assert current.read_text() == other.address  # nor did the private Ray advertise itself in its place
    finally:
        other.stop()


@pytest.mark.slow
def test_ray_failing_to_start_is_a_clear_message(tmp_path, knn_inputs):
    queries, index = knn_inputs
    # Ray's sockets live under its temp folder; past 107 bytes a Unix socket path cannot exist
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    done = run_knn_cli(queries, index, tmp_path / "out", {"RAY_TMPDIR": str(deep)})
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Ray failed to start" in done.stderr
    assert "Traceback" not in done.stdout + done.stderr


def test_small_jobs_run_inline_by_default_up_to_the_measured_threshold_and_never_on_a_named_cluster(monkeypatch):
    from pipeline.config import RayConfig
    from pipeline.config.common import INLINE_MAX_ROWS
    from pipeline.runtime import runs_inline

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    default = RayConfig()
    assert runs_inline(default, INLINE_MAX_ROWS) and not runs_inline(default, INLINE_MAX_ROWS + 1)
    assert not runs_inline(default, None)  # rows not counted up front (CSV, JSONL, tar): Ray
    assert not runs_inline(RayConfig(inline_max_rows=0), 1)  # 0 forces Ray
    assert not runs_inline(RayConfig(address="auto"), 1)  # a named cluster: always Ray
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:6379")
    assert not runs_inline(default, 1)
