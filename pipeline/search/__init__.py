"""Search an index directory: ``Searcher`` (the Python API), the `latent search` command, the `latent knn` job."""

from pipeline.search.searcher import QueryError, Searcher, SearchResult

__all__ = ["QueryError", "SearchResult", "Searcher"]
