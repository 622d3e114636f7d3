"""Issue 8: `k=1000000000` exhausted the machine's memory on a 300k index. Every entry point bounds k (by
MAX_K and by the index size) before anything is allocated: proven on the allocation, not by running out."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from index.helpers import run_cli

from pipeline.cli import compose
from pipeline.config import ServeConfig
from pipeline.errors import LatentError
from pipeline.search import QueryError, Searcher
from pipeline.search.knn import _check_config
from pipeline.search.limits import MAX_K, check_k
from pipeline.serve.models import SearchQuery, search_query_model
from pipeline.serve.server import _check


class RecordingIndex:
    """The real FAISS index, with the ``k`` of every search it is asked for recorded."""

    def __init__(self, index) -> None:
        self.index, self.ks = index, []

    def search(self, x, k):
        self.ks.append(k)
        return self.index.search(x, k)


def test_check_k():
    assert check_k(5) == 5 and check_k(np.int64(7), ntotal=3) == 3 and check_k(MAX_K) == MAX_K
    for bad in (0, -1, 2.5, True, "10"):
        with pytest.raises(LatentError, match="positive integer"):
            check_k(bad)
    with pytest.raises(LatentError, match=f"at most {MAX_K}"):
        check_k(MAX_K + 1, ntotal=10)


def test_searcher_refuses_a_huge_k_before_allocating(flat_index):
    searcher = Searcher.open(flat_index)
    recording = RecordingIndex(searcher.directory.index)
    searcher.directory._index = recording
    query = np.ones((4, 32), np.float32)
    tracemalloc.start()
    try:
        with pytest.raises(QueryError, match=f"k=1000000000: at most {MAX_K}"):
            searcher.search(vectors=query, k=1_000_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert recording.ks == [] and peak < 1 << 20  # FAISS never asked; no k-sized buffer was made
    result = searcher.search(vectors=query, k=MAX_K)  # allowed, bounded by the index size (2000)
    assert recording.ks == [2000] and result.scores.shape == (4, 2000) and result.ids.shape == (4, 2000)
    result = searcher.search_vectors(query / np.linalg.norm(query, axis=1, keepdims=True), k=MAX_K)
    assert recording.ks[-1] == 2000 and result.scores.shape == (4, 2000)
    with pytest.raises(QueryError):
        searcher.search_vectors(query, k=10**9)


def test_cli_search_refuses_a_huge_k(flat_index, tmp_path):
    vector = "[" + ",".join(["0.1"] * 32) + "]"
    done = run_cli("search", f"index.path={flat_index}", f"query.vector={vector}", "k=1000000000", cwd=tmp_path)
    assert done.returncode == 2 and f"at most {MAX_K}" in done.stderr and "Traceback" not in done.stderr


def test_knn_config_bounds_k_by_max_and_index_size(flat_index, tmp_path):
    from pipeline.index.store.directory import IndexDirectory

    directory = IndexDirectory.open(flat_index)
    cfg = compose("knn", [f"input.path={tmp_path}", f"index.path={flat_index}", f"output.path={tmp_path}/o", "k=9000"])
    _check_config(cfg, directory)
    assert cfg.k == 2000  # every row of the output holds at most ntotal neighbours: so do its buffers
    cfg.k = 1_000_000_000
    with pytest.raises(LatentError, match=f"at most {MAX_K}"):
        _check_config(cfg, directory)


def test_serve_bounds_max_k_and_the_request_model():
    cfg: ServeConfig = compose("serve", ["index.path=/nowhere", f"max_k={MAX_K + 1}"])
    with pytest.raises(LatentError, match=f"max_k={MAX_K + 1}: at most {MAX_K}"):
        _check(cfg)
    from pydantic import ValidationError

    for model in (SearchQuery, search_query_model(100, 10, 32)):
        with pytest.raises(ValidationError, match="less than or equal to"):
            model(text="cat", k=1_000_000_000)
