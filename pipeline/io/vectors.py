"""Which vectors a job can use, and the one message each unusable kind gets in ``_errors`` (every job:
map placement and sampling, knn queries). A NaN or infinite vector has no position; under cosine
(metric ip) a zero vector has no direction, and each of its scores is 0, so it would land beside row 0."""

from __future__ import annotations

import numpy as np

NOT_FINITE = "NaN or infinite vector"
ZERO = "zero vector (no direction: cosine is undefined)"


def vector_errors(vectors: np.ndarray, metric: str) -> list[str | None]:
    """Per row: None where the vector is usable under ``metric`` ("ip" or "l2"), else why not."""
    vectors = np.asarray(vectors)
    if not len(vectors):
        return []
    finite = np.isfinite(vectors).all(axis=1)
    zero = ~np.any(vectors != 0, axis=1)
    errors: list[str | None] = [None] * len(vectors)
    for i in np.flatnonzero(~finite):
        errors[i] = NOT_FINITE
    if metric == "ip":
        for i in np.flatnonzero(finite & zero):
            errors[i] = ZERO
    return errors


def usable(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Boolean mask of the rows ``vector_errors`` passes."""
    vectors = np.asarray(vectors)
    ok = np.isfinite(vectors).all(axis=1) if len(vectors) else np.zeros(0, bool)
    if metric == "ip" and len(vectors):
        ok &= np.any(vectors != 0, axis=1)
    return ok
