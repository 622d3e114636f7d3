"""Searcher on a sharded index: vector, text and id queries answer exactly as the unsharded index."""

from __future__ import annotations

import numpy as np
import pytest
from index.helpers import build

from pipeline.index.nodes import apply_search_params
from pipeline.search import Searcher
from search.helpers import model_config


@pytest.fixture(scope="module")
def photo_pair(local_ray, photo_embeddings, tmp_path_factory):
    """The photos' image embeddings as one IVF index and as 2 shards of the same trained index."""
    root = tmp_path_factory.mktemp("photo-shards")
    common = ["input.column=image_embedding", "index.factory='IVF2,Flat'", "index.tune_queries=2"]
    build(photo_embeddings, root / "one", *common)
    build(photo_embeddings, root / "two", *common, "index.shards=2")
    return root / "one", root / "two"


def assert_same(a, b) -> None:
    assert a.ids.tolist() == b.ids.tolist()
    np.testing.assert_array_equal(a.scores, b.scores)
    assert a.items == b.items


def test_sharded_searcher_equals_unsharded(photo_pair, tiny_checkpoint):
    one, two = (Searcher.open(p, model_config(tiny_checkpoint)) for p in photo_pair)
    assert two.directory.info.shards and len(two.directory.info.shards) == 2 and two.ntotal == one.ntotal
    # both at the unsharded index's parameters (tuning picks by measured speed)
    apply_search_params(two.directory.index, one.info.search_params)
    k = one.ntotal
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((5, one.dim)).astype(np.float32)
    assert_same(one.search(vectors=vectors, k=k), two.search(vectors=vectors, k=k))
    texts = ["a photo of chelsea", "a photo of a rocket", "coffee"]
    assert_same(one.search(texts=texts, k=k), two.search(texts=texts, k=k))
    for id in one.directory.all_ids().to_pylist():  # search by an indexed item: its vector from its shard
        np.testing.assert_array_equal(one.vector(id), two.vector(id))
        assert_same(one.search(vectors=one.vector(id), k=3), two.search(vectors=two.vector(id), k=3))
