"""The bound on ``k``, the number of hits a query may ask for: its one home (docs/search.md, docs/http-api.md).

Every entry point (``Searcher.search``, `latent search`, `latent knn`, `latent serve`'s request model)
checks ``k`` here before anything is allocated: a result holds ``n x min(k, ntotal)`` scores and labels,
so neither a huge ``k`` nor a small index can make a query allocate more than ``n x MAX_K`` of them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import LatentError

MAX_K = 10_000  # most hits per query; FAISS allocates n x k scores and labels per search


def check_k(k: Any, ntotal: int | None = None, key: str = "k", error: type[LatentError] = LatentError) -> int:
    """``k`` as an int, refused unless ``1 <= k <= MAX_K``; with ``ntotal``, bounded by the index size."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise error(f"{key}={k!r}: must be a positive integer")
    k = int(k)
    if k <= 0:
        raise error(f"{key}={k}: must be a positive integer")
    if k > MAX_K:
        raise error(f"{key}={k}: at most {MAX_K} hits per query (MAX_K in pipeline/search/limits.py)")
    return min(k, ntotal) if ntotal is not None else k
