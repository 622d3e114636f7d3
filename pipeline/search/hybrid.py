"""Keyword and hybrid search: BM25 over the items' text, fused with vector search by reciprocal rank fusion.

``mode="hybrid"``: the vector search's and the keyword search's top ``depth`` lists (depth = max(k,
FUSION_DEPTH)) are fused: an item scores ``1 / (RRF_K + rank_vector) + weight / (RRF_K + rank_keyword)``
(rank from 1; absent from a list: no term). ``weight`` (``keyword_weight``) is the keyword list's weight
against the vector list's 1. RRF needs no score calibration between BM25 and cosine, which live on
unrelated scales. ``mode="keyword"``: the BM25 list alone. Both honour ``where=`` (the same mask).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import LatentError

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion
FUSION_DEPTH = 100  # each list's depth before fusing
MODES = ("vector", "keyword", "hybrid")


def check_mode(mode: str, has_keywords: bool, info_text: dict | None) -> None:
    if mode not in MODES:
        raise LatentError(f"mode={mode}: expected one of {', '.join(MODES)}")
    if mode != "vector":
        if info_text is None:
            raise LatentError(
                f"mode={mode}: this index has no keyword index (build it with index.text=bm25, or append with it)"
            )
        if not has_keywords:
            raise LatentError(f"mode={mode}: give the query's words (texts=, or keywords= beside vectors=)")


def fuse(
    vector_labels: np.ndarray, keyword_labels: np.ndarray, k: int, weight: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(fused scores, labels), (n, k), best first; -1 / NaN past the items either list found."""
    n = len(vector_labels)
    scores = np.full((n, k), np.nan, np.float32)
    labels = np.full((n, k), -1, np.int64)
    for q in range(n):
        total: dict[int, float] = {}
        for ranked, w in ((vector_labels[q], 1.0), (keyword_labels[q], weight)):
            for rank, label in enumerate(ranked[ranked >= 0].tolist(), start=1):
                total[label] = total.get(label, 0.0) + w / (RRF_K + rank)
        best = sorted(total.items(), key=lambda item: (-item[1], item[0]))[:k]
        labels[q, : len(best)] = [label for label, _ in best]
        scores[q, : len(best)] = [score for _, score in best]
    return scores, labels


def hybrid_search(
    searcher,
    mode: str,
    words,
    vector_query: dict,
    k: int,
    with_items: bool,
    where: str | None,
    weight: float,
):
    """``Searcher.search`` in mode keyword or hybrid (a SearchResult; ``plan`` is the vector side's)."""
    from pipeline.index.keywords import KeywordIndex
    from pipeline.search.limits import check_k

    if mode == "vector":
        raise LatentError("keywords= needs mode=keyword or mode=hybrid")
    words = [words] if isinstance(words, str) else (list(words) if words is not None else None)
    check_mode(mode, bool(words), searcher.info.text)
    if any(not isinstance(w, str) or not w.strip() for w in words):
        raise LatentError("keywords: each query's words must be a non-empty string")
    if not np.isfinite(weight) or weight < 0:
        raise LatentError(f"keyword_weight={weight}: a finite number >= 0")
    k = check_k(k, searcher.ntotal, error=LatentError)
    mask = searcher.columns.mask(where)[1] if where is not None else None
    depth = min(searcher.ntotal, max(k, FUSION_DEPTH))
    index = getattr(searcher, "_keyword_index", None)
    if index is None:
        index = searcher._keyword_index = KeywordIndex(searcher.directory.path, searcher.info.text)
    keyword_scores, keyword_labels = index.search(words, depth, mask)
    if mode == "keyword":
        return searcher.result(keyword_scores[:, :k], keyword_labels[:, :k], with_items)
    if len(vector_query) != 1:
        raise LatentError(f"mode=hybrid: give exactly one of vectors, texts, images or terms (got {len(vector_query)})")
    queries = searcher.encode(**vector_query)
    if len(queries) != len(words):
        raise LatentError(f"mode=hybrid: {len(queries)} queries but {len(words)} keyword strings")
    _, vector_labels, plan = searcher.search_labels(queries, depth, where)
    scores, labels = fuse(vector_labels, keyword_labels, k, weight)
    return searcher.result(scores, labels, with_items, plan)
