"""How well a map keeps neighbours: of each sampled row's ``k`` nearest neighbours in latent space, the
share that are also among its ``k`` nearest on the map, within the sample (``neighbourhood_preservation``)
or among all rows (``preservation_among_all``); and the same figure for umap-learn's full fit of the sample
(the reference a landmark layout is measured against)."""

from __future__ import annotations

import time
from collections.abc import Iterable

import numpy as np

from pipeline.map.layout import _flat_index, to_distances, umap_layout


def _neighbours(points: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    index = _flat_index(points.shape[1], metric)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(points[queries], dtype=np.float32), k + 1)
    return _without_self(found, queries, k)  # each query itself dropped (wherever ties put it)


def pick_queries(n: int, queries: int, seed: int) -> np.ndarray:
    """The seeded, sorted positions (of ``n`` rows) whose neighbourhoods are compared."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))


def _without_self(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    out = np.empty((len(own), k), dtype=np.int64)
    for i, (q, row) in enumerate(zip(own, found)):
        out[i] = [j for j in row if j != q][:k]
    return out


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
    all the map's points (``point_rows``, ``point_xy``). Non-finite vectors are left out, like their rows."""
    queries = np.ascontiguousarray(query_vectors, dtype=np.float32)
    best_d = np.full((len(queries), k + 1), np.inf, dtype=np.float32)
    best_r = np.full((len(queries), k + 1), -1, dtype=np.int64)
    for rows, vectors in batches:
        finite = np.isfinite(vectors).all(axis=1)
        if not finite.all():
            rows, vectors = rows[finite], vectors[finite]
        if not len(rows):
            continue
        index = _flat_index(vectors.shape[1], metric)
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
        scores, found = index.search(queries, min(k + 1, len(rows)))
        d = np.concatenate([best_d, to_distances(scores, metric)], axis=1)
        r = np.concatenate([best_r, np.where(found >= 0, rows[np.maximum(found, 0)], -1)], axis=1)
        keep = np.argsort(d, axis=1, kind="stable")[:, : k + 1]
        best_d, best_r = np.take_along_axis(d, keep, axis=1), np.take_along_axis(r, keep, axis=1)
    on_map = _flat_index(2, "l2")
    on_map.add(np.ascontiguousarray(point_xy, dtype=np.float32))
    at = np.searchsorted(point_rows, query_rows)
    _, near = on_map.search(np.ascontiguousarray(point_xy[at], dtype=np.float32), k + 1)
    latent = _without_self(best_r, query_rows, k)
    mapped = _without_self(point_rows[near], query_rows, k)
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
