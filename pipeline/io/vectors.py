"""Which vectors a job can use, and the one message each unusable kind gets in ``_errors`` (every job:
map placement and sampling, knn queries). A NaN or infinite vector has no position; under cosine
(metric ip) a zero vector has no direction, and each of its scores is 0, so it would land beside row 0."""

from __future__ import annotations

import numpy as np

NOT_FINITE = "NaN or infinite vector"
ZERO = "zero vector (no direction: cosine is undefined)"


def _checked(vectors: np.ndarray, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(finite, zero without a direction under ``metric``) per row."""
    vectors = np.asarray(vectors)
    if not len(vectors):
        return np.zeros(0, bool), np.zeros(0, bool)
    finite = np.isfinite(vectors).all(axis=1)
    pointless = finite & ~np.any(vectors != 0, axis=1) if metric == "ip" else np.zeros(len(vectors), bool)
    return finite, pointless


def vector_errors(vectors: np.ndarray, metric: str) -> list[str | None]:
    """Per row: None where the vector is usable under ``metric`` ("ip" or "l2"), else why not."""
    finite, pointless = _checked(vectors, metric)
    return [NOT_FINITE if not f else ZERO if z else None for f, z in zip(finite.tolist(), pointless.tolist())]


def usable(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Boolean mask of the rows ``vector_errors`` passes."""
    finite, pointless = _checked(vectors, metric)
    return finite & ~pointless
