"""`latent serve backend=ray` refuses at once an application the cluster cannot place (issue 22): with
default keys a 4-shard index needs 5 CPUs; Ray Serve would wait for them forever without a word."""

from __future__ import annotations

import pytest
from index.helpers import build, dataset, vectors

from pipeline.errors import LatentError

from .conftest import serve_config


@pytest.fixture(scope="module")
def four_shards(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-fit")
    path = work / "idx"
    build(dataset(work / "emb", vectors(200), dtype="float32"), path, "index.factory=Flat", "index.shards=4")
    return path


def test_an_application_larger_than_the_cluster_is_refused_naming_what_fits(local_ray, four_shards):
    from pipeline.serve.ray_app import build_application

    assert local_ray.cluster_resources()["CPU"] == 2  # the session's Ray
    # 4 shards + the ingress + the query encoder (the index has a model fingerprint)
    with pytest.raises(LatentError, match=r"6 replicas .* need 6 CPUs, the cluster has 2: .*replica_cpus=0\.33"):
        build_application(serve_config(four_shards, "backend=ray"))
    with pytest.raises(LatentError, match=r"10 replicas .*replicas=2.*need 5 CPUs.*replica_cpus=0\.2 "):
        build_application(serve_config(four_shards, "backend=ray", "replicas=2", "replica_cpus=0.5"))
    fits = 0.33
    build_application(serve_config(four_shards, "backend=ray", f"replica_cpus={fits}"))  # bound, not deployed
