"""The filtered-search planner: how to find the k nearest among the rows a ``where`` mask selects.

Three plans, chosen per call from the mask's selectivity ``s`` (matched rows / rows) and a cost model
counted in vector components touched per query (docs/search.md#filters):
- ``none``: no row matches; every hit is empty (label -1), nothing is searched.
- ``exact``: the matched rows' stored vectors (exact for Flat, HNSW-Flat, IVF-Flat and re-ranked indexes,
  whose re-rank copies are reconstructed) are searched by brute force: ``matched * dim`` per query.
- ``filtered``: the index itself, with a FAISS ``IDSelectorBitmap`` so that only matched rows are scored,
  and its search breadth raised as ``s`` falls so that recall@k stays at the index's tuned target: an IVF
  probes ``nprobe / s**IVF_EXPONENT`` lists (0.5), a graph keeps ``efSearch / s`` candidates (both capped);
  re-ranking (``k_factor_rf``) is unchanged, its candidates all match already.
The cheaper of ``exact`` and ``filtered`` runs; ``filtered`` is never picked when its breadth hits a cap
that could cost recall (a graph at ``HNSW_MAX_EF``). Sharded indexes filter every shard with its slice of
the mask and merge the shards' top-k exactly as unfiltered search does.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import faiss
import numpy as np

from pipeline.errors import LatentError
from pipeline.index.nodes import chain
from pipeline.index.store import shards

IVF_EXPONENT = 0.5  # nprobe grows as s ** -0.5: held recall@10 >= 0.989 from 50 % to 0.01 % (docs/benchmarks.md)
IVF_SCAN_SHARE = 0.1  # share of an IVF search's time that grows with nprobe (the rest: coarse search, re-rank)
EXACT_OVERHEAD = 2.5  # exact search over reconstructed rows vs the build's exact search, per row (measured)
HNSW_MAX_EF = 4096  # a wider graph search than this costs more than scanning the rows it would reach
EXACT_BELOW_ROWS = 2048  # always exact at or below this many matched rows: cheaper than any setup
FLOAT_COST = 1.0  # per vector component: exact search over float32 copies
SCAN_COST = {"fastscan": 1 / 16, "pq": 1 / 4, "sq": 1 / 2, "flat": 1.0}  # per component, by code kind


@dataclass
class Plan:
    """What a filtered search did; reported in SearchResult.plan, the CLI's --verbose and HTTP responses."""

    kind: str  # none | exact | filtered
    where: str
    matched: int
    rows: int
    params: dict[str, Any] = field(default_factory=dict)  # the filtered plan's search parameters (run if filtered)
    cost: dict[str, Any] = field(default_factory=dict)  # the cost model's estimates of both plans, and their unit

    @property
    def selectivity(self) -> float:
        return self.matched / self.rows if self.rows else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "selectivity": round(self.selectivity, 6)}


def _code_kind(node: faiss.Index) -> str:
    if isinstance(node, (faiss.IndexIVFFastScan, faiss.IndexFastScan)):
        return "fastscan"
    if isinstance(node, (faiss.IndexIVFPQ, faiss.IndexPQ)):
        return "pq"
    if isinstance(node, (faiss.IndexIVFScalarQuantizer, faiss.IndexScalarQuantizer)):
        return "sq"
    return "flat"


def plan_search(
    index: faiss.Index, mask: np.ndarray, k: int, where: str, qps: float | None = None, exact_qps: float | None = None
) -> Plan:
    """The plan for ``k`` nearest among ``mask``'s rows of ``index`` (its tuned parameters applied).

    ``qps``/``exact_qps``: the index's measured batch throughput and exact search's over all its rows
    (index.json); the plans' costs are estimated from them (seconds per query), else from a count of
    vector components touched."""
    if not isinstance(index, faiss.Index):  # remote shards plan per shard (RemoteShards.search_filtered)
        raise LatentError(f"where=: cannot plan a filtered search over a {type(index).__name__}")
    rows, matched = int(mask.size), int(np.count_nonzero(mask))
    plan = Plan("none", where, matched, rows)
    if matched == 0:
        return plan
    s = matched / rows
    nodes = chain(index)
    inner, dim = nodes[-1], index.d
    refine = next((n for n in nodes if isinstance(n, faiss.IndexRefine)), None)
    measured = bool(qps and exact_qps)
    exact = EXACT_OVERHEAD * s / exact_qps if measured else matched * dim * FLOAT_COST
    breadth = 1.0  # how much wider than unfiltered the filtered search is
    params: dict[str, Any] = {}
    if isinstance(inner, faiss.IndexIVF):
        nprobe = min(inner.nlist, math.ceil(inner.nprobe * s**-IVF_EXPONENT))
        params["nprobe"] = nprobe
        breadth = 1 + IVF_SCAN_SHARE * (nprobe / max(1, inner.nprobe) - 1)
        scanned = rows * nprobe / inner.nlist
        rerank = k * refine.k_factor * dim if refine is not None else 0.0
        components = inner.nlist * dim + scanned * dim * SCAN_COST[_code_kind(inner)] + rerank
    elif isinstance(inner, faiss.IndexHNSW):
        ef = max(inner.hnsw.efSearch, k, math.ceil(inner.hnsw.efSearch / s))
        params["efSearch"] = min(ef, HNSW_MAX_EF)
        breadth = math.inf if ef > HNSW_MAX_EF else params["efSearch"] / max(1, inner.hnsw.efSearch)
        components = breadth * max(1, inner.hnsw.efSearch) * inner.hnsw.nb_neighbors(0) * dim
    else:  # flat: the selector skips unmatched rows, the matched ones cost what exact search costs
        breadth = s
        components = matched * dim * FLOAT_COST * 1.05
    if refine is not None:
        params["k_factor_rf"] = refine.k_factor
    filtered = breadth / qps if measured else components
    plan.cost = {"exact": float(exact), "filtered": float(filtered), "unit": "s/query" if measured else "components"}
    plan.params = params
    plan.kind = "exact" if matched <= EXACT_BELOW_ROWS or exact <= filtered else "filtered"
    return plan


# --- running a plan ------------------------------------------------------------------------------


def run_plan(
    plan: Plan, index: faiss.Index, mask: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(scores, labels) of the plan, shaped (n, k); label -1 (score NaN) where fewer than k rows match."""
    n = len(queries)
    if plan.kind == "none":
        return np.full((n, k), np.nan, np.float32), np.full((n, k), -1, np.int64)
    if plan.kind == "exact":
        return _exact(index, np.flatnonzero(mask), queries, k, metric)
    if shards.is_sharded(index):
        parts, firsts, first = shards.shard_parts(index), [], 0
        distances, labels = [], []
        for part in parts:
            firsts.append(first)
            d, i = _filtered(part, mask[first : first + part.ntotal], queries, k, plan.params)
            distances.append(d)
            labels.append(i)
            first += part.ntotal
        return shards.merge_results(distances, labels, firsts, k, keep_max=metric == "ip")
    return _filtered(index, mask, queries, k, plan.params)


def _filtered(
    index: faiss.Index, mask: np.ndarray, queries: np.ndarray, k: int, params: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray]:
    bits = np.packbits(mask, bitorder="little")
    selector = faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits))
    keep: list[Any] = [bits, selector]  # SWIG does not keep the parameter objects alive: we do
    search_params = _parameters(chain(index), 0, selector, params, keep)
    return index.search(queries, k, params=search_params)


def _parameters(nodes: list[faiss.Index], at: int, selector, params: dict[str, Any], keep: list[Any]):
    """SearchParameters for ``nodes[at:]``: wrappers pass theirs down, the innermost gets the selector."""
    node = nodes[at]
    if isinstance(node, faiss.IndexPreTransform):
        inner = _parameters(nodes, at + 1, selector, params, keep)
        out = faiss.SearchParametersPreTransform(index_params=inner)
    elif isinstance(node, faiss.IndexRefine):
        inner = _parameters(nodes, at + 1, selector, params, keep)
        out = faiss.IndexRefineSearchParameters(k_factor=float(params.get("k_factor_rf", node.k_factor)))
        out.base_index_params = inner
    elif isinstance(node, faiss.IndexIVF):
        out = faiss.SearchParametersIVF(sel=selector, nprobe=int(params.get("nprobe", node.nprobe)))
    elif isinstance(node, faiss.IndexHNSW):
        out = faiss.SearchParametersHNSW(sel=selector, efSearch=int(params.get("efSearch", node.hnsw.efSearch)))
    else:
        out = faiss.SearchParameters(sel=selector)
    keep.append(out)
    return out


def _exact(
    index: faiss.Index, labels: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Brute force over the stored vectors of ``labels``."""
    vectors = stored_vectors(index, labels)
    if metric == "ip":
        scores, local = faiss.knn(queries, vectors, min(k, len(labels)), metric=faiss.METRIC_INNER_PRODUCT)
    else:
        scores, local = faiss.knn(queries, vectors, min(k, len(labels)), metric=faiss.METRIC_L2)
    found = np.where(local >= 0, labels[np.maximum(local, 0)], -1)
    if found.shape[1] < k:  # fewer matched rows than k
        pad = k - found.shape[1]
        scores = np.pad(scores.astype(np.float32), ((0, 0), (0, pad)), constant_values=np.nan)
        found = np.pad(found, ((0, 0), (0, pad)), constant_values=-1)
    return scores.astype(np.float32, copy=False), found.astype(np.int64, copy=False)


def stored_vectors(index: faiss.Index, labels: np.ndarray) -> np.ndarray:
    """The stored vectors of ``labels`` (sorted), float32: from the re-rank copies where there are some,
    else what the index reconstructs (IVF: through a direct map, built once)."""
    if shards.is_sharded(index):
        out, first = [], 0
        for part in shards.shard_parts(index):
            mine = labels[(labels >= first) & (labels < first + part.ntotal)] - first
            if mine.size:
                out.append(_reconstruct(part, mine))
            first += part.ntotal
        return np.concatenate(out) if out else np.zeros((0, index.d), np.float32)
    return _reconstruct(index, labels)


def _reconstruct(index: faiss.Index, labels: np.ndarray) -> np.ndarray:
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    try:
        return index.reconstruct_batch(labels)
    except RuntimeError:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise
        ivf.make_direct_map()
        return index.reconstruct_batch(labels)
