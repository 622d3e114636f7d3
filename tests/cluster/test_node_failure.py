"""A worker node dies in the middle of an embed job: the elastic pool shrinks, the job goes on on the head, a
node that joins mid-job gets work, each input is embedded once, and the run record logs the loss and the join."""

from __future__ import annotations

import json

import pytest

from pipeline.launch import submit_job

from .conftest import JOB_TIMEOUT, job_config, job_end, make_corpus, read_ids, tiny_embed_command, wait_for
from .localcluster import LocalCluster
from .test_cluster_jobs import job_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_embed_job_survives_the_worker_node_dying_and_a_node_that_joins_gets_work(ray_cluster, tiny_model, tmp_path):
    # the default pool: one encoder per 2-CPU node, 2 at start; after the loss, 2 actors and a read task no
    # longer fit the head: a fixed-size pool waited forever, and Ray's restart of the lost encoder on the head
    # starved the read tasks (issue 19); the stages restart with one encoder
    lose_a_node_then_join_one(ray_cluster, tiny_model, tmp_path)


def test_on_one_cpu_nodes_the_pool_shrinks_to_one_actor_beside_a_reader(tiny_model, tmp_path):
    """1 CPU declared per node: two half-CPU encoders and half-CPU reads; after the loss, the head's one CPU
    holds one encoder and one read task, not two encoders."""
    cluster = LocalCluster.start(head_cpus=1, worker_cpus=1)
    try:
        resources = ("resources.encoder_actors=2", "resources.cpus_per_encoder=0.5", "resources.cpus_per_reader=0.5")
        lose_a_node_then_join_one(cluster, tiny_model, tmp_path, *resources)
    finally:
        cluster.stop()


def lose_a_node_then_join_one(ray_cluster, tiny_model, tmp_path, *resources: str) -> None:
    from ray.job_submission import JobSubmissionClient

    corpus = tmp_path / "images"
    names = make_corpus(corpus, 800, seed=7)  # enough that the job still runs when a node joins again
    out = tmp_path / "emb"
    # small shards and read tasks: many commits, so the kill lands with most of the corpus still to do
    command = tiny_embed_command(
        corpus,
        out,
        tiny_model,
        "batch_size=8",
        "output.rows_per_shard=8",
        "input.files_per_task=8",
        *resources,
    )
    cfg = job_config(ray_cluster, *command, name="embed-kill")
    cfg.wait = False
    submission = submit_job(cfg).submission_id
    client = JobSubmissionClient(ray_cluster.dashboard_url)
    try:
        wait_for(lambda: list(out.glob("*.parquet")), JOB_TIMEOUT, "the first committed shard")
        ray_cluster.kill_worker()
        done_at_kill = len(read_ids(out))
        assert done_at_kill < len(names), "the job finished before the worker was killed: nothing was tested"
        wait_for(lambda: len(read_ids(out)) > done_at_kill + 16, JOB_TIMEOUT, "progress on the head alone", every=1.0)
        joined = ray_cluster.add_worker(ray_cluster.nodes["worker"].num_cpus)
        assert len(read_ids(out)) < len(names), "the job finished before a node joined: the join was not tested"
        status = job_end(client, submission)
        assert status == "SUCCEEDED", client.get_job_logs(submission)[-3000:]
        assert joined.node_id in job_nodes(ray_cluster, submission)  # the node that joined got work
        ids = read_ids(out)
        assert len(ids) == len(set(ids)), "an input was embedded twice"
        assert sorted(ids) == sorted(names), "an input is missing"
        assert (out / "_SUCCESS").exists()
        (events,) = (out / "_latent" / "runs").glob("*/events.jsonl")
        logged = [json.loads(line) for line in events.read_text().splitlines()]
        kinds = [e["event"] for e in logged]
        assert kinds[0] == "node_lost" and logged[0]["drained"] is False, logged  # killed, not drained (Ray's reason)
        assert [e["node"] for e in logged if e["event"] == "node_joined"] == [joined.node_id], logged
        # (a "stages_restarted" in between when the pool no longer fit the head beside a reader: docs/cluster.md)
    finally:
        if str(client.get_job_status(submission).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            client.stop_job(submission)
        if ray_cluster.nodes["worker"].raylet() is None:  # the next test gets two nodes again
            ray_cluster.add_worker(ray_cluster.nodes["worker"].num_cpus)
