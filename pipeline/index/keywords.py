"""The keyword index of an index directory: BM25 over the items' text (``index.text=bm25|auto``).

Built with bm25s (a small, maintained library: BM25 scores precomputed into a scipy sparse matrix,
numpy-only at query time, saved as plain .npy/.json files that load memory-mapped, and a per-document
weight mask, so ``where=`` filters keyword hits without a second pass). It is rebuilt from the whole of
items.arrow at every build and append, so it always holds exactly the index's rows (label = document).
Files: ``text.bm25/`` in the index directory; index.json's ``text`` says what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import LatentError

TEXT_DIR = "text.bm25"
STOPWORDS = "en"


def requested(mode: str, schema_names: list[str], column: str = "text") -> dict[str, Any] | None:
    """index.json's ``text`` request for ``index.text=mode`` (completed by ``build_keyword_index``)."""
    mode = getattr(mode, "value", mode)
    if mode == "none":
        return None
    if column not in schema_names:
        if mode == "auto":
            return None
        raise LatentError(f"index.text={mode}: the input has no '{column}' column to index (use index.text=none)")
    return {"kind": "bm25", "column": column, "auto": mode == "auto"}


def build_keyword_index(items: pa.Table, out: Path, request: dict[str, Any]) -> dict[str, Any] | None:
    """Index the ``request['column']`` of ``items`` (label order) into ``out``; the ``text`` entry of
    index.json, or None when ``auto`` found no text."""
    import bm25s

    column = items.column(request["column"])
    if request.get("auto") and column.null_count == len(column):
        return None
    texts = [t or "" for t in column.to_pylist()]
    tokens = bm25s.tokenize(texts, stopwords=STOPWORDS, show_progress=False)
    retriever = bm25s.BM25()
    retriever.index(tokens, show_progress=False)
    retriever.save(str(out), show_progress=False)
    files = sorted(path.name for path in Path(out).iterdir() if path.is_file())  # checksummed in index.json
    return {**request, "dir": TEXT_DIR, "rows": len(texts), "library": f"bm25s {bm25s.__version__}", "files": files}


class KeywordIndex:
    """A saved BM25 index, memory-mapped."""

    def __init__(self, directory: Path, text: dict[str, Any]) -> None:
        import bm25s

        self.text = text
        self.retriever = bm25s.BM25.load(str(directory / text["dir"]), mmap=True, show_progress=False)
        self.rows = int(text["rows"])
        self._vocab = self.retriever.vocab_dict

    def search(self, queries: list[str], k: int, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, labels), (n, k), best first; label -1 where fewer than k items hold a query's words."""
        import bm25s

        tokens = bm25s.tokenize(queries, stopwords=STOPWORDS, return_ids=False, show_progress=False)
        scores = np.full((len(queries), k), np.nan, np.float32)
        labels = np.full((len(queries), k), -1, np.int64)
        weights = None if mask is None else mask.astype(np.float32)
        for q, words in enumerate(tokens):
            known = [w for w in words if w in self._vocab]
            if not known:
                continue
            found, got = self.retriever.retrieve(
                [known], k=min(k, self.rows), show_progress=False, weight_mask=weights, n_threads=0
            )
            hit = got[0] > 0  # BM25 scores 0 where a document holds none of the words
            scores[q, : hit.sum()] = got[0][hit]
            labels[q, : hit.sum()] = found[0][hit]
        return scores, labels
