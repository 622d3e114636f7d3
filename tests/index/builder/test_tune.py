from __future__ import annotations

import faiss
import numpy as np

from index.helpers import exact_neighbours, vectors
from pipeline.index.builder.gpu import train
from pipeline.index.builder.tune import CONFIDENCE_Z, tune, wilson_interval
from pipeline.index.plan.choose import make_index
from pipeline.index.recall import GroundTruth, recall_at_k, without_self

IP = faiss.METRIC_INNER_PRODUCT


def test_ground_truth_streamed_in_batches_equals_exact_search():
    x = vectors(3000)
    queries = x[::97]
    truth = GroundTruth(queries, 10, IP)
    for start in range(0, 3000, 700):  # uneven batches, the last smaller than k
        truth.add(x[start : start + 700], np.arange(start, min(start + 700, 3000)))
    np.testing.assert_array_equal(truth.labels(), exact_neighbours(x, queries, 11))


def test_without_self_and_recall():
    labels = np.array([[5, 1, 2, 3], [7, 8, -1, -1]])
    assert without_self(labels, np.array([1, 7]), 2).tolist() == [[5, 2], [8, -1]]
    valid = np.ones(10, dtype=bool)
    valid[2] = False
    assert without_self(labels, np.array([1, 7]), 3, valid).tolist() == [[5, 3, -1], [8, -1, -1]]
    assert recall_at_k(np.array([[1, 2], [3, 4]]), np.array([[1, 9], [4, 3]])) == 0.75


def setup_ivf(factory: str, n: int = 6000):
    x = vectors(n, seed=1)
    index = make_index(factory, 32, IP)
    train(index, x[:3000], "cpu")
    index.add(x)
    rows = np.arange(0, n, 23)
    queries = x[rows]
    truth = without_self(exact_neighbours(x, queries, 11), rows, 10)
    return index, queries, truth, rows


def measured_recall(index, queries, truth, rows) -> float:
    _, labels = index.search(queries, 11)
    return recall_at_k(without_self(labels, rows, 10), truth)


def test_tune_finds_the_smallest_nprobe_reaching_the_target():
    index, queries, truth, rows = setup_ivf("IVF64,Flat")
    result = tune(index, queries, truth, rows, 10, 0.9)
    nprobe = result.params["nprobe"]
    lower = wilson_interval(result.recall, len(queries))[0]
    assert result.reached and lower >= 0.9 and (result.lower, result.upper) == wilson_interval(result.recall, 261)
    assert faiss.extract_index_ivf(index).nprobe == nprobe  # left set
    assert measured_recall(index, queries, truth, rows) == result.recall
    faiss.extract_index_ivf(index).nprobe = max(1, int(nprobe * 0.75))  # a clearly lower setting misses
    assert wilson_interval(measured_recall(index, queries, truth, rows), 261)[0] < 0.9 or nprobe <= 2


def test_wilson_interval_is_the_margin_for_sampling_error():
    low, high = wilson_interval(0.95, 1000)
    assert 0.93 < low < 0.95 < high < 0.97
    assert wilson_interval(1.0, 400) == (400 / (400 + CONFIDENCE_Z**2), 1.0)  # closed form at p = 1
    assert wilson_interval(0.95, 10_000)[0] > low  # more queries, a tighter promise


def test_tune_refined_index_sets_both_knobs():
    index, queries, truth, rows = setup_ivf("IVF64,PQ8x4fs,RFlat")
    result = tune(index, queries, truth, rows, 10, 0.95)
    assert result.reached and set(result.params) == {"nprobe", "k_factor_rf"}
    assert measured_recall(index, queries, truth, rows) >= 0.95


def test_hnsw_tunes_ef_search():
    index, queries, truth, rows = setup_ivf("HNSW16,Flat", n=3000)
    result = tune(index, queries, truth, rows, 10, 0.97)
    assert result.reached and set(result.params) == {"efSearch"} and index.hnsw.efSearch == result.params["efSearch"]


def test_unreachable_target_reports_the_best_setting():
    index, queries, truth, rows = setup_ivf("IVF64,PQ4x4fs")  # tiny codes, no re-rank: cannot reach 0.99
    result = tune(index, queries, truth, rows, 10, 0.99)
    assert not result.reached and result.params == {"nprobe": 64} and result.recall < 0.99
