"""The worker node dies in the middle of a knn job and of a map's placement (embed's are in test_node_failure.py),
with 2 and with 1 CPU declared per node: when the pool no longer fits the head beside a read task, the driver
restarts the stages with one actor; the job goes on, every row is answered or placed exactly once, and the run
record logs the loss (and the restart)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import pyarrow.dataset as pads
import pytest
from index.helpers import build, dataset, vectors
from map.conftest import clustered
from synthetic import write_embedding_dataset

from pipeline.launch import submit_job

from .conftest import JOB_TIMEOUT, job_config, job_end, wait_for
from .localcluster import LocalCluster

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def rows_in(directory: Path, column: str) -> list:
    """``column`` of every committed row under ``directory`` (empty while nothing is committed)."""
    if not directory.is_dir() or not list(directory.glob("*.parquet")):
        return []
    return pads.dataset(str(directory), format="parquet").to_table(columns=[column]).column(column).to_pylist()


def kill_the_worker_mid_job(cluster: LocalCluster, command: list[str], committed: Callable[[], int], total: int):
    """Submit ``command``, SIGKILL the worker node once its first rows are committed, wait for the job's end.
    Returns the job's final status and logs; the worker is started again for the next test."""
    from ray.job_submission import JobSubmissionClient

    cfg = job_config(cluster, *command, name="lose-a-node")
    cfg.wait = False
    submission = submit_job(cfg).submission_id
    client = JobSubmissionClient(cluster.dashboard_url)
    try:
        wait_for(committed, JOB_TIMEOUT, "the first committed rows")
        cluster.kill_worker()
        assert committed() < total, "the job finished before the worker was killed: nothing was tested"
        return job_end(client, submission), client.get_job_logs(submission)[-3000:]
    finally:
        if str(client.get_job_status(submission).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            client.stop_job(submission)
        if cluster.nodes["worker"].raylet() is None:  # the next test gets two nodes again
            cluster.add_worker(cluster.nodes["worker"].num_cpus)


ONE_CPU = ("resources.cpus_per_actor=0.5", "resources.cpus_per_reader=0.5")  # 2 half-CPU actors, half-CPU reads


@pytest.fixture
def one_cpu_cluster():
    cluster = LocalCluster.start(head_cpus=1, worker_cpus=1)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_knn_job_survives_the_worker_node_dying(ray_cluster, tmp_path):
    # 2 searchers (one per 2-CPU node) and a read task: after the loss only one searcher fits beside the reader
    knn_survives_losing_the_worker(ray_cluster, tmp_path)


def test_knn_job_survives_the_worker_node_dying_on_one_cpu_nodes(one_cpu_cluster, tmp_path):
    # the head's one CPU holds one half-CPU searcher and one half-CPU read, not the two searchers
    knn_survives_losing_the_worker(one_cpu_cluster, tmp_path, *ONE_CPU)


def test_map_placement_survives_the_worker_node_dying(ray_cluster, tmp_path):
    placement_survives_losing_the_worker(ray_cluster, tmp_path)


def test_map_placement_survives_the_worker_node_dying_on_one_cpu_nodes(one_cpu_cluster, tmp_path):
    placement_survives_losing_the_worker(one_cpu_cluster, tmp_path, *ONE_CPU)


def knn_survives_losing_the_worker(cluster: LocalCluster, tmp_path: Path, *resources: str) -> None:
    queries = 1600
    src = dataset(tmp_path / "queries", vectors(queries, seed=5), rows_per_shard=100, dtype="float32")
    build(dataset(tmp_path / "base", vectors(2000, seed=6), dtype="float32"), tmp_path / "idx", "index.factory=Flat")
    out = tmp_path / "knn"
    command = [
        *(sys.executable, "-m", "pipeline.cli", "knn", f"input.path={src}", f"index.path={tmp_path / 'idx'}"),
        *(f"output.path={out}", "k=3", "batch_size=20", "output.rows_per_shard=40", "resources.actors=2"),
        *("progress=false", "ray.address=auto", *resources),
    ]
    answered = lambda: len(rows_in(out / "neighbors", "query_id"))  # noqa: E731
    status, logs = kill_the_worker_mid_job(cluster, command, answered, queries)

    assert status == "SUCCEEDED", logs
    ids = rows_in(out / "neighbors", "query_id")
    assert sorted(ids) == sorted(f"v{i}" for i in range(queries))  # every query once
    assert (out / "_SUCCESS").exists()
    assert_lost_then_restarted(out / "_latent")


def placement_survives_losing_the_worker(cluster: LocalCluster, tmp_path: Path, *resources: str) -> None:
    rows = 4000
    emb = tmp_path / "emb"
    write_embedding_dataset(emb, clustered(rows)[0], dtype="float32", rows_per_shard=250)  # 16 units
    out = tmp_path / "map"
    command = [
        *(sys.executable, "-m", "pipeline.cli", "map", f"input.path={emb}", f"output.path={out}"),
        *("map.method=pca", "map.landmarks=800", "map.labels=none", "quality.sample=0", "image=false"),
        *("resources.actors=2", "batch_size=20", "output.rows_per_shard=40", "progress=false", "ray.address=auto"),
        *resources,
    ]

    def placed() -> int:
        staging = list(out.parent.glob(f".{out.name}.tmp-map-*"))  # placement commits there, published at the end
        return len(rows_in(staging[0] / "points", "row")) if staging else 0

    status, logs = kill_the_worker_mid_job(cluster, command, placed, rows)

    assert status == "SUCCEEDED", logs
    assert sorted(rows_in(out / "points", "row")) == list(range(rows))  # every row placed, none twice
    assert_lost_then_restarted(out / "_latent")


def assert_lost_then_restarted(state_dir: Path) -> None:
    """The run record: the node lost; the stages restarted with the one actor that fits beside a reader, if the
    pool held more than that (Ray Data may have released an idle actor before the loss)."""
    (events,) = (state_dir / "runs").glob("*/events.jsonl")
    logged = [json.loads(line) for line in events.read_text().splitlines()]
    assert logged[0]["event"] == "node_lost" and logged[0]["drained"] is False, logged
    assert all(e["actors"] == 1 for e in logged if e["event"] == "stages_restarted"), logged
