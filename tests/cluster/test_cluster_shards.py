"""A sharded index built across both nodes of a real two-node Ray cluster answers as the unsharded index."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from index.helpers import build, dataset, same_answers, vectors

from pipeline.index.store.directory import IndexDirectory
from pipeline.search import Searcher

from .conftest import JOB_TIMEOUT, REPO, latest_summary
from .localcluster import cluster_env

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(400)]


def index_on_cluster(cluster, src, out, *extra: str) -> dict:
    command = [sys.executable, "-m", "pipeline.cli", "index", f"input.path={src}", f"index.path={out}",
               "index.factory='IVF16,SQ8'", "index.target_recall=0.9", "index.max_memory=1G",
               f"ray.address={cluster.address}", "progress=false", *extra]  # fmt: skip
    run = subprocess.run(command, cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=JOB_TIMEOUT)
    assert run.returncode == 0, run.stderr[-3000:]
    return latest_summary(out)


def test_two_shards_across_both_nodes_equal_the_unsharded_index(ray_cluster, tmp_path):
    x = vectors(4000, seed=11)
    src = dataset(tmp_path / "ds", x, rows_per_shard=250)
    build(src, tmp_path / "one", "index.factory='IVF16,SQ8'", "index.target_recall=0.9", "parallel.min_vectors=null")
    summary = index_on_cluster(ray_cluster, src, tmp_path / "two", "index.shards=2")
    assert summary["ray_tasks"] == 2
    # SPREAD: one shard built on the head, one on the worker
    assert set(summary["ray_nodes"]) == {n.node_id for n in ray_cluster.nodes.values()}
    one, two = IndexDirectory.open(tmp_path / "one"), IndexDirectory.open(tmp_path / "two")
    same_answers(one, two, np.ascontiguousarray(x[::41]))
    # id queries: the stored vector comes from the shard holding the item, and finds the same neighbours
    a, b = Searcher(one), Searcher(two)
    for id in ["v3", "v1850", "v3999"]:
        np.testing.assert_array_equal(a.vector(id), b.vector(id))
        ra, rb = a.search(vectors=a.vector(id), k=10), b.search(vectors=b.vector(id), k=10)
        np.testing.assert_array_equal(ra.scores, rb.scores)
    # on-disk shards built on the cluster answer as the in-memory index
    index_on_cluster(ray_cluster, src, tmp_path / "disk", "index.shards=2", "index.storage=ondisk")
    same_answers(one, IndexDirectory.open(tmp_path / "disk"), np.ascontiguousarray(x[::41]))
