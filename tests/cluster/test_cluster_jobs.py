"""latent's jobs on a real two-node Ray cluster: submitted through the Jobs API, spread over both nodes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow.dataset as pads
import pytest
from index.helpers import build, dataset, vectors

from pipeline.launch import submit_job

from .conftest import JOB_TIMEOUT, REPO, job_config, latest_summary, read_ids, tiny_embed_command
from .localcluster import cluster_env

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]


def job_nodes(cluster, submission_id: str) -> set[str]:
    """The nodes that ran the submitted job's tasks and actors (Ray's state API, through the dashboard)."""
    from ray.job_submission import JobSubmissionClient
    from ray.util.state import list_tasks

    job_id = JobSubmissionClient(cluster.dashboard_url).get_job_info(submission_id).job_id
    tasks = list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10000, timeout=30)
    return {t.node_id for t in tasks if t.node_id}


def test_embed_job_through_the_jobs_api_runs_on_both_nodes(ray_cluster, cluster_corpus, tiny_model, tmp_path):
    corpus, names = cluster_corpus
    out = tmp_path / "emb"
    command = tiny_embed_command(
        corpus, out, tiny_model, "batch_size=16", "output.rows_per_shard=32", "input.files_per_task=16"
    )
    result = submit_job(job_config(ray_cluster, *command, name="embed-api"))
    assert result.status == "SUCCEEDED", result.logs[-3000:]

    ids = read_ids(out)
    assert sorted(ids) == sorted(names)  # every input once
    assert (out / "_SUCCESS").exists()
    summary = latest_summary(out / "_latent")
    assert summary["rows"] == len(names) and summary["errors"] == 0
    assert list((out / "_latent" / "runs").glob("*/config.yaml"))
    # both nodes ran the job's work: decode tasks and encoder actors spread over the cluster
    assert job_nodes(ray_cluster, result.submission_id) == {n.node_id for n in ray_cluster.nodes.values()}


def test_index_add_phase_spreads_over_both_nodes(ray_cluster, tmp_path):
    x = vectors(4000, seed=3)
    src = dataset(tmp_path / "ds", x, rows_per_shard=250)  # 16 shards
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.cli",
            "index",
            f"input.path={src}",
            f"index.path={tmp_path / 'idx'}",
            "index.factory='IVF16,Flat'",
            "index.target_recall=0.9",
            "index.max_memory=1G",
            "parallel.min_vectors=0",
            "parallel.tasks=4",
            f"ray.address={ray_cluster.address}",
            "progress=false",
        ],
        cwd=REPO,
        env=cluster_env(),
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    summary = latest_summary(tmp_path / "idx")
    assert summary["ntotal"] == 4000 and summary["ray_tasks"] == 4
    # the add tasks recorded where they ran: both the head and the worker added shards
    assert set(summary["ray_nodes"]) == {n.node_id for n in ray_cluster.nodes.values()}
    assert summary["recall"]["value"] >= 0.9
    from pipeline.index.store.directory import IndexDirectory

    index = IndexDirectory.open(tmp_path / "idx")
    assert index.info.ntotal == 4000
    distances, _ = index.index.search(x[:20], 1)
    np.testing.assert_allclose(distances[:, 0], 1.0, atol=2e-3)  # each finds itself (float16 vectors)


def test_knn_job_through_the_jobs_api_is_complete_and_runs_on_both_nodes(ray_cluster, tmp_path):
    from pipeline.search import Searcher

    x = vectors(1200, seed=5)
    src = dataset(tmp_path / "emb", x, rows_per_shard=100, dtype="float32")  # 12 shards: read tasks to spread
    build(src, tmp_path / "idx", "index.factory=Flat")
    out = tmp_path / "knn"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "knn",
        f"input.path={src}",
        f"index.path={tmp_path / 'idx'}",
        f"output.path={out}",
        "k=5",
        "batch_size=100",
        "resources.actors=2",
        "model.device=cpu",
        "progress=false",
        "ray.address=auto",
    ]
    result = submit_job(job_config(ray_cluster, *command, name="knn-api"))
    assert result.status == "SUCCEEDED", result.logs[-3000:]

    table = pads.dataset(str(out / "neighbors"), format="parquet").to_table()
    got = {r["query_id"]: r["neighbor_ids"] for r in table.to_pylist()}
    assert sorted(got) == sorted(f"v{i}" for i in range(len(x)))  # every query, once
    expected = Searcher.open(tmp_path / "idx").search(vectors=x, k=5, with_items=False)
    assert [got[f"v{i}"] for i in range(len(x))] == expected.ids.tolist()
    assert (out / "_SUCCESS").exists()
    assert job_nodes(ray_cluster, result.submission_id) == {n.node_id for n in ray_cluster.nodes.values()}
