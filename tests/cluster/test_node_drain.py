"""A worker node gets SIGTERM in the middle of an embed job, as a spot VM's preemption notice sends it: the node is
drained (Ray 2.60's `ray start --block` marks it draining, Ray Data sends it no new batches, its batches in flight
finish), then leaves; the job goes on on the head, every input once, nothing redone, and the run record logs it."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from pipeline.launch import submit_job

from .conftest import JOB_TIMEOUT, job_config, job_end, make_corpus, read_ids, tiny_embed_command, wait_for
from .localcluster import RAY, LocalCluster, cluster_env
from .test_cluster_jobs import job_nodes

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

DRAIN_S = 10  # a spot VM gets 30 s (GCP) to 2 min (AWS); shorter keeps the test short (the driver looks every 5 s)
CORPUS = 800  # images: enough that the job still runs when the node has left


def _embed_job_with_a_first_shard(cluster: LocalCluster, tiny_model: str, tmp_path, seed: int, name: str):
    """An embed job submitted to ``cluster``, once its first shard is committed: (names, out, client, submission)."""
    from ray.job_submission import JobSubmissionClient

    corpus, out = tmp_path / "images", tmp_path / "emb"
    names = make_corpus(corpus, CORPUS, seed=seed)
    command = tiny_embed_command(
        corpus, out, tiny_model, "batch_size=8", "output.rows_per_shard=8", "input.files_per_task=8"
    )
    cfg = job_config(cluster, *command, name=name)
    cfg.wait = False
    submission = submit_job(cfg).submission_id
    client = JobSubmissionClient(cluster.dashboard_url)
    wait_for(lambda: list(out.glob("*.parquet")), JOB_TIMEOUT, "the first committed shard")
    return names, out, client, submission


def _assert_succeeded_with_every_input_once(client, submission: str, out, names: list[str]) -> None:
    assert job_end(client, submission) == "SUCCEEDED", client.get_job_logs(submission)[-3000:]
    ids = read_ids(out)
    assert len(ids) == len(set(ids)), "an input was embedded twice"
    assert sorted(ids) == sorted(names), "an input is missing"


def _run_events(out) -> list[dict]:
    (events,) = (out / "_latent" / "runs").glob("*/events.jsonl")
    return [json.loads(line) for line in events.read_text().splitlines()]


def test_a_worker_node_that_gets_sigterm_finishes_its_batches_then_leaves_and_the_job_goes_on(tiny_model, tmp_path):
    from ray.util.state import list_tasks

    cluster = LocalCluster.start(head_cpus=2, worker_cpus=None)
    try:
        worker = cluster.add_worker(2, drain_s=DRAIN_S)
        names, out, client, submission = _embed_job_with_a_first_shard(cluster, tiny_model, tmp_path, 11, "embed-drain")
        cluster.drain_worker()
        assert len(read_ids(out)) < len(names), "the job finished before the notice: the drain was not tested"
        worker.blocking.wait(DRAIN_S + 60)  # drained, then stopped: at the deadline at the latest
        assert "Draining for up to" in worker.log.read_text(), worker.log.read_text()[-2000:]

        _assert_succeeded_with_every_input_once(client, submission, out, names)
        assert worker.node_id in job_nodes(cluster, submission)  # the drained node had work before its notice
        # finished, not redone: no read or encoder task ran twice (a killed node's tasks in flight are retried)
        job_id = client.get_job_info(submission).job_id
        tasks = list_tasks(address=cluster.dashboard_url, filters=[("job_id", "=", job_id)], limit=10000, timeout=30)
        redone = [(t.name, t.attempt_number) for t in tasks if t.attempt_number and t.type != "ACTOR_CREATION_TASK"]
        assert not redone, redone
        logged = _run_events(out)
        about = [e for e in logged if e.get("node") == worker.node_id]
        # node_draining when the driver saw the drain (it looks every second; an idle node leaves at once), then
        # node_lost, marked drained, unless the job was done before the node left
        assert [e["event"] for e in about] in (["node_draining", "node_lost"], ["node_lost"], ["node_draining"]), logged
        assert all(e["drained"] is True for e in about if e["event"] == "node_lost"), logged
        assert all(0 < e["deadline_in_s"] <= DRAIN_S for e in about if e["event"] == "node_draining"), logged
    finally:
        cluster.stop()


def test_a_worker_node_drained_with_ray_drain_node_then_stopped_at_its_deadline_costs_the_job_nothing(
    tiny_model, tmp_path
):
    """`ray drain-node` (what an operator or Ray's autoscaler v2 uses; Ray 2.60's CLI) marks the node draining;
    it does not stop the node: the caller does at the deadline. The job goes on, every input once, and the
    run record says the node drained, then left."""

    cluster = LocalCluster.start(head_cpus=2, worker_cpus=2)
    try:
        worker = cluster.nodes["worker"]
        names, out, client, submission = _embed_job_with_a_first_shard(
            cluster, tiny_model, tmp_path, 13, "embed-drain-node"
        )
        drain = [RAY, "drain-node", f"--address={cluster.address}", f"--node-id={worker.node_id}"]
        drain += ["--reason=DRAIN_NODE_REASON_PREEMPTION", "--reason-message=latent test: spot notice"]
        drain += [f"--deadline-remaining-seconds={DRAIN_S}"]
        done = subprocess.run(drain, env=cluster_env(), capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert len(read_ids(out)) < len(names), "the job finished before the drain: nothing was tested"
        time.sleep(DRAIN_S)
        if worker.raylet() is not None:  # the deadline: the cloud stops the VM
            cluster.kill_worker()

        _assert_succeeded_with_every_input_once(client, submission, out, names)
        logged = _run_events(out)
        about = [e["event"] for e in logged if e.get("node") == worker.node_id]
        assert about in (["node_draining", "node_lost"], ["node_draining"]), logged  # seen draining (every second)
        assert all(e["drained"] is True for e in logged if e["event"] == "node_lost"), logged
    finally:
        cluster.stop()
