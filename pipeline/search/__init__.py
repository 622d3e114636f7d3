"""Search an index directory: ``Searcher`` (the Python API), the `latent search` command, the `latent knn` job."""

import pipeline.index  # noqa: F401  (first: sets FAISS's OpenMP policy and quiets its loader before FAISS loads)
from pipeline.search.searcher import QueryError, Searcher, SearchResult

__all__ = ["QueryError", "SearchResult", "Searcher"]
