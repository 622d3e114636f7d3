"""`latent serve backend=ray` on a cluster smaller than its replicas (issue 22): with default keys a 4-shard index
needs 6 replicas (4 shards, the ingress, the query encoder) where the session's Ray has 2 CPUs. Ray Serve used to
wait for them forever without a word; now each replica's share is sized to fit (said in a log line) and the
application answers, while a ``replica_cpus`` the user gave that cannot fit is refused at once."""

from __future__ import annotations

import logging

import httpx
import pytest
from index.helpers import build, dataset, vectors

from pipeline.errors import LatentError

from .conftest import serve_config
from .rayserve import deploy, free_port


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-fit")
    path = work / "idx"
    build(dataset(work / "emb", vectors(200), dtype="float32"), path, "index.factory=Flat", "index.shards=4")
    return path


def test_a_replica_cpus_that_cannot_fit_is_refused_naming_what_fits(local_ray, four_shards):
    from pipeline.serve.ray_app import build_application

    assert local_ray.cluster_resources()["CPU"] == 2  # the session's Ray
    # 4 shards + the ingress + the query encoder (the index has a model fingerprint)
    with pytest.raises(LatentError, match=r"6 replicas .* need 6 CPUs, the cluster has 2: .*replica_cpus=0\.33"):
        build_application(serve_config(four_shards, "backend=ray", "replica_cpus=1"))
    with pytest.raises(LatentError, match=r"10 replicas .*replicas=2.*need 5 CPUs.*replica_cpus=0\.2 "):
        build_application(serve_config(four_shards, "backend=ray", "replicas=2", "replica_cpus=0.5"))
    # even the automatic share has a floor: 4 x 60 + 2 replicas on 2 CPUs is under 0.01 CPU each
    with pytest.raises(LatentError, match=r"242 replicas .* do not fit on a cluster of 2 CPUs even at 0\.01 CPU"):
        build_application(serve_config(four_shards, "backend=ray", "replicas=60"))


def test_default_keys_size_the_replicas_to_the_cluster_and_the_application_answers(local_ray, four_shards, caplog):
    from ray import serve

    from pipeline.search import Searcher
    from pipeline.serve.ray_fit import replica_cpus_that_fit

    cfg = serve_config(four_shards, "backend=ray", f"port={free_port()}")  # replica_cpus: the default (null)
    assert cfg.replica_cpus is None
    with caplog.at_level(logging.WARNING, logger="pipeline.serve.ray_fit"):
        assert replica_cpus_that_fit(cfg, 4, encoder=True) == 0.33
    assert "6 replicas (4 shard(s) x replicas=1 + 1 ingress + encoder_replicas=1) on a cluster of 2 CPUs" in caplog.text
    assert "replica_cpus=0.33" in caplog.text
    # a cluster with room for 1 CPU each keeps 1 CPU each, silently
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipeline.serve.ray_fit"):
        assert replica_cpus_that_fit(cfg, 1, encoder=False) == 1.0
    assert caplog.text == ""

    url = deploy(cfg, "fit", timeout_s=240)  # before: "taken more than 30s to be scheduled", forever
    try:
        deployments = serve.status().applications["fit"].deployments
        assert {name: d.status.value for name, d in deployments.items() if name.startswith("shard")} == {
            f"shard-{s:05d}": "HEALTHY" for s in range(4)
        }
        reserved = local_ray.available_resources().get("CPU", 0)
        assert reserved == pytest.approx(2 - 6 * 0.33, abs=1e-6)  # 6 replicas at 0.33 each hold 1.98 CPUs
        query = Searcher.open(four_shards).vector("v17")
        answer = httpx.post(f"{url}/search", json={"vector": query.tolist(), "k": 3}, timeout=60)
        assert answer.status_code == 200, answer.text
        assert answer.json()["hits"][0]["id"] == "v17"
    finally:
        serve.shutdown()  # not serve.delete: Serve, left running, keeps its HTTP port for the next app


def test_the_share_fits_every_node_not_only_the_total():
    from pipeline.serve.ray_fit import share_that_fits

    assert share_that_fits([2.0], 6) == 0.33
    assert share_that_fits([1.0, 1.0, 1.0], 7) == 0.33  # 3/7 = 0.42 by the total: 2 a node, 6 < 7 placed
    assert share_that_fits([1.0, 1.0], 10) == 0.2
    assert share_that_fits([4.0, 0.5], 2) == 2.0  # both on the larger node
    assert share_that_fits([2.0], 300) == 0.0  # not even 0.01 each
