"""Exact neighbours and recall: the truth an index (and a map's layout) is measured against.

``GroundTruth`` accumulates exact top-k neighbours while the vectors stream past (FAISS's
``ResultHeap``), ``without_self`` drops a query's own row, ``recall_at_k`` compares found with true.
Used by the index build and tuner (pipeline/index/builder/) and by the map's quality figures.
"""

from __future__ import annotations

import time

import faiss
import numpy as np


class GroundTruth:
    """Exact top-(k+1) neighbours of ``queries``, merged batch by batch as the corpus streams past."""

    def __init__(self, queries: np.ndarray, k: int, metric: int) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k + 1  # +1: the query's own row, dropped later
        self.metric = metric
        self.heap = faiss.ResultHeap(len(queries), self.k, keep_max=metric == faiss.METRIC_INNER_PRODUCT)
        self.seconds = 0.0  # spent in exact search: the queries' cost under exact (Flat) search, for comparison

    def add(self, vectors: np.ndarray, labels: np.ndarray) -> None:
        """Merge the exact neighbours among ``vectors`` (whose FAISS labels are ``labels``)."""
        if not len(vectors) or not len(self.queries):
            return
        start = time.perf_counter()
        distances, positions = faiss.knn(self.queries, vectors, min(self.k, len(vectors)), metric=self.metric)
        self.heap.add_result(distances, np.asarray(labels, dtype=np.int64)[positions])
        self.seconds += time.perf_counter() - start

    @property
    def exact_qps(self) -> float | None:
        """Batch queries per second of exact search over what was added (None before anything was)."""
        return len(self.queries) / self.seconds if self.seconds > 0 else None

    def merge(self, distances: np.ndarray, labels: np.ndarray) -> None:
        """Merge neighbours found elsewhere (another process's GroundTruth.heap.D / .I)."""
        self.heap.add_result(distances, labels)

    def labels(self) -> np.ndarray:
        self.heap.finalize()
        return self.heap.I


def without_self(labels: np.ndarray, own: np.ndarray, k: int, valid: np.ndarray | None = None) -> np.ndarray:
    """Each row's first ``k`` labels other than the query's own (-1 padded); with ``valid`` (a mask over
    labels), only labels the ground truth covers."""
    out = np.full((len(labels), k), -1, dtype=np.int64)
    for i, (row, me) in enumerate(zip(labels, own)):
        keep = (row != me) & (row >= 0)
        if valid is not None:
            keep &= valid[np.maximum(row, 0)]
        kept = row[keep][:k]
        out[i, : len(kept)] = kept
    return out


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true neighbours that were found (rows of labels, -1 ignored)."""
    hits = total = 0
    for f, t in zip(found, truth):
        t = t[t >= 0]
        hits += len(np.intersect1d(f[f >= 0], t))
        total += len(t)
    return hits / total if total else 1.0
