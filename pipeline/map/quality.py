"""How well a map keeps neighbours: of each sampled row's ``k`` nearest neighbours in latent space, the
share that are also among its ``k`` nearest on the map, within the sample (``neighbourhood_preservation``)
or among all rows (``preservation_among_all``); and the same figure for umap-learn's full fit of the sample
(the reference a landmark layout is measured against)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import faiss
import numpy as np

from pipeline.index.recall import GroundTruth, without_self
from pipeline.io.vectors import usable
from pipeline.map.layout import _flat_index, umap_layout


def _neighbours(points: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    index = _flat_index(points.shape[1], metric)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(points[queries], dtype=np.float32), k + 1)
    return without_self(found, queries, k)  # each query itself dropped (wherever ties put it)


def pick_queries(n: int, queries: int, seed: int) -> np.ndarray:
    """The seeded, sorted positions (of ``n`` rows) whose neighbourhoods are compared."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))


def preservation_among_all(
    query_rows: np.ndarray,
    query_vectors: np.ndarray,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    point_rows: np.ndarray,
    point_xy: np.ndarray,
    *,
    k: int = 10,
    metric: str = "ip",
) -> float:
    """Mean share of each query row's ``k`` nearest among all rows in latent space (``batches``: every row's
    (global rows, vectors), streamed: exact search, a running top ``k``) found among its ``k`` nearest among
    all the map's points (``point_rows``, ``point_xy``). Unusable vectors are left out, like their rows."""
    truth = GroundTruth(query_vectors, k, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    for rows, vectors in batches:
        ok = usable(vectors, metric)
        truth.add(vectors[ok], rows[ok])
    on_map = _flat_index(2, "l2")
    on_map.add(np.ascontiguousarray(point_xy, dtype=np.float32))
    at = np.searchsorted(point_rows, query_rows)
    _, near = on_map.search(np.ascontiguousarray(point_xy[at], dtype=np.float32), k + 1)
    latent = without_self(truth.labels(), query_rows, k)
    mapped = without_self(point_rows[near], query_rows, k)
    return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(latent, mapped)]) / k)


def neighbourhood_preservation(
    vectors: np.ndarray, xy: np.ndarray, *, k: int = 10, queries: int = 2000, metric: str = "ip", seed: int = 0
) -> float:
    """Mean share of each query row's ``k`` latent neighbours (among ``vectors``) found among its ``k``
    nearest on the map (``xy``, the same rows); queries: a seeded sample of the rows."""
    n = len(vectors)
    if n <= k + 1:
        return float("nan")
    picked = pick_queries(n, queries, seed)
    latent = _neighbours(vectors, picked, k, metric)
    on_map = _neighbours(np.asarray(xy, np.float32), picked, k, "l2")
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(latent, on_map)]
    return float(np.mean(shared) / k)


def reference_preservation(
    vectors: np.ndarray, *, k: int = 10, queries: int = 2000, metric: str = "ip", seed: int = 0, n_neighbors: int = 15
) -> tuple[float, float]:
    """(preservation, seconds) of umap-learn's full fit of ``vectors`` (graph by FAISS, as the map's)."""
    started = time.perf_counter()
    xy = umap_layout(vectors, n_neighbors=n_neighbors, metric=metric, seed=seed)
    seconds = time.perf_counter() - started
    return neighbourhood_preservation(vectors, xy, k=k, queries=queries, metric=metric, seed=seed), seconds
