from __future__ import annotations

import faiss
import pytest

from index.helpers import vectors
from pipeline.errors import LatentError
from pipeline.index.builder.gpu import train
from pipeline.index.plan.choose import (
    HNSW_BUILD_BUDGET_S,
    choose_factory,
    estimate_index_bytes,
    hnsw_build_seconds,
    make_index,
    nlist_for,
    parse_memory,
    plan_candidates,
    pq_subquantizers,
)

IP = faiss.METRIC_INNER_PRODUCT
GiB = 1 << 30


def choose(n: int, budget: int, dim: int = 512, target: float = 0.95):
    return choose_factory(n, dim, budget, target, IP, train_sample=100_000, batch_size=16384, queries=1000)


@pytest.mark.parametrize(
    ("n", "budget", "factory"),
    [
        (5_000, 16 * GiB, "Flat"),
        (50_000, 16 * GiB, "HNSW32,Flat"),
        (200_000, 16 * GiB, "IVF512,PQ128x4fs,Refine(SQfp16)"),
        (1_000_000, 16 * GiB, "IVF1024,PQ128x4fs,Refine(SQfp16)"),
        (1_000_000, 2 * GiB, "IVF1024,PQ128x4fs,Refine(SQfp16)"),
        (1_000_000, GiB, "IVF1024,PQ128x4fs,Refine(SQ8)"),
        (50_000, 200 << 20, "Flat"),  # neither the graph nor float16 re-rank fits; exact search does
    ],
)
def test_auto_choice_by_size_and_memory(n, budget, factory):
    choice = choose(n, budget)
    assert choice.factory == factory
    assert choice.index_bytes + choice.build_bytes <= budget and choice.warning is None


@pytest.mark.parametrize(
    ("n", "dim", "graph"),
    [(100_000, 512, True), (110_000, 512, False), (180_000, 64, True), (190_000, 50, True), (260_000, 50, False)],
)
def test_graph_cut_off_weighs_dimension(n, dim, graph):
    """HNSW is a first choice while its estimated build time fits, so low-dimensional corpora get it at more rows."""
    assert (choose(n, 64 * GiB, dim=dim).factory == "HNSW32,Flat") == graph
    assert (hnsw_build_seconds(n, dim) <= HNSW_BUILD_BUDGET_S) == graph


def test_fallbacks_follow_the_first_choice_finer_codes_graph_ivf_flat_exact():
    factories = [c.factory for c in plan_candidates(300_000, 128, 16 * GiB, 0.95, IP, 100_000, 16384, 1000)]
    assert factories[:5] == [
        "IVF512,PQ32x4fs,Refine(SQfp16)",
        "IVF512,PQ64x4fs,Refine(SQfp16)",
        "HNSW32,Flat",
        "IVF512,Flat",
        "Flat",
    ]
    tight = [c.factory for c in plan_candidates(300_000, 128, 170 << 20, 0.95, IP, 100_000, 16384, 1000)]
    assert "Flat" not in tight and tight[0] == "IVF512,PQ32x4fs,Refine(SQfp16)"


def test_codes_only_when_nothing_else_fits_comes_with_a_warning():
    choice = choose(1_000_000, 700 << 20)
    assert choice.factory.startswith("OPQ") and ",IVF1024,PQ" in choice.factory
    assert "unlikely to reach" in choice.warning


def test_a_high_target_warns_when_only_a_lossy_rerank_fits():
    assert choose(1_000_000, GiB, target=0.97).warning is None
    lossy = choose(1_000_000, GiB, target=0.99)  # an 8-bit re-rank tops out below 0.99
    assert lossy.factory.endswith("Refine(SQ8)") and "unlikely to reach" in lossy.warning
    assert choose(1_000_000, 2 * GiB, target=0.99).factory.endswith("Refine(SQfp16)")
    assert choose(1_000_000, 16 * GiB, target=0.9999).factory.endswith("RFlat")  # float32 re-rank


def test_budget_too_small_for_anything():
    with pytest.raises(LatentError, match="too small for any index of 1000000 512-d vectors"):
        choose(1_000_000, 100 << 20)


@pytest.mark.parametrize(
    "factory", ["Flat", "HNSW16,Flat", "IVF32,Flat", "IVF32,PQ8x4fs,RFlat", "OPQ8_32,IVF32,PQ8x4fs", "IVF32,SQ8"]
)
def test_estimates_match_built_indexes(factory):
    x = vectors(5000)
    index = make_index(factory, 32, IP)
    train(index, x, "cpu")
    index.add(x)
    actual = len(faiss.serialize_index(index))
    assert estimate_index_bytes(factory, 5000, 32) == pytest.approx(actual, rel=0.15)


def test_invalid_factory_is_a_user_error():
    with pytest.raises(LatentError, match="index.factory=IVF,Nope"):
        make_index("IVF,Nope", 32, IP)


def test_shapes():
    assert nlist_for(1_000_000) == 1024 and nlist_for(200_000) == 512 and nlist_for(10) == 16
    assert pq_subquantizers(512) == 128 and pq_subquantizers(768) == 192 and pq_subquantizers(30) == 6


@pytest.mark.parametrize(
    ("text", "expected"), [("4G", 4 * GiB), ("512M", 512 << 20), ("1.5GiB", int(1.5 * GiB)), ("1000", 1000)]
)
def test_parse_memory(text, expected):
    assert parse_memory(text) == expected
    assert parse_memory("auto") > 0
    with pytest.raises(LatentError, match="index.max_memory=lots"):
        parse_memory("lots")
