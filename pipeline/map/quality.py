"""How well a map keeps neighbours: of each sampled row's ``k`` nearest neighbours in latent space, the
share that are also among its ``k`` nearest on the map; and the same figure for umap-learn's full fit of
those rows (the reference a landmark layout is measured against)."""

from __future__ import annotations

import time

import numpy as np

from pipeline.map.layout import _flat_index, umap_layout


def _neighbours(points: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    index = _flat_index(points.shape[1], metric)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(points[queries], dtype=np.float32), k + 1)
    # drop each query itself (wherever ties put it), keep k
    out = np.empty((len(queries), k), dtype=np.int64)
    for i, (q, row) in enumerate(zip(queries, found)):
        out[i] = [j for j in row if j != q][:k]
    return out


def neighbourhood_preservation(
    vectors: np.ndarray, xy: np.ndarray, *, k: int = 10, queries: int = 2000, metric: str = "ip", seed: int = 0
) -> float:
    """Mean share of each query row's ``k`` latent neighbours (among ``vectors``) found among its ``k``
    nearest on the map (``xy``, the same rows); queries: a seeded sample of the rows."""
    n = len(vectors)
    if n <= k + 1:
        return float("nan")
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(n, size=min(queries, n), replace=False))
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
