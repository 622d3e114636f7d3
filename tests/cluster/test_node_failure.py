"""A worker node dies in the middle of an embed job: the job finishes on the head, each input once."""

from __future__ import annotations

import pytest

from pipeline.launch import submit_job

from .conftest import JOB_TIMEOUT, job_config, make_corpus, read_ids, tiny_embed_command, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]


def test_embed_job_survives_the_worker_node_dying(ray_cluster, tiny_model, tmp_path):
    from ray.job_submission import JobSubmissionClient

    corpus = tmp_path / "images"
    names = make_corpus(corpus, 160, seed=7)  # enough that an idle machine is still busy when the kill lands
    out = tmp_path / "emb"
    # small shards and read tasks: many commits, so the kill lands with most of the corpus still to do
    command = tiny_embed_command(
        corpus,
        out,
        tiny_model,
        "batch_size=8",
        "output.rows_per_shard=8",
        "input.files_per_task=8",
        "resources.encoder_actors=1",  # the head keeps a CPU for decoding when the actor moves there
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
        status = wait_for(
            lambda: (
                str(client.get_job_status(submission).value) in ("SUCCEEDED", "FAILED", "STOPPED")
                and str(client.get_job_status(submission).value)
            ),
            JOB_TIMEOUT,
            "the job to end after the worker died",
            every=1.0,
        )
        assert status == "SUCCEEDED", client.get_job_logs(submission)[-3000:]
        assert len(ray_cluster.alive_nodes()) == 1  # it finished on the head alone
        ids = read_ids(out)
        assert len(ids) == len(set(ids)), "an input was embedded twice"
        assert sorted(ids) == sorted(names), "an input is missing"
        assert (out / "_SUCCESS").exists()
    finally:
        if str(client.get_job_status(submission).value) not in ("SUCCEEDED", "FAILED", "STOPPED"):
            client.stop_job(submission)
        if ray_cluster.nodes["worker"].raylet() is None:  # the next test gets two nodes again
            ray_cluster.add_worker(ray_cluster.nodes["worker"].num_cpus)
