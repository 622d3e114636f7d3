"""Searcher: the Python API of search. An index directory plus, on demand, the model that built it.

``Searcher.open(INDEX)`` memory-maps the index directory (docs/index-directory.md). The first text or
image query builds the query encoder from the model fingerprint in index.json (``embedding.model``),
after checking that the weights and the model's dimension match it. Many queries in one ``search``
call cost one encoder batch and one FAISS search.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.config import SearchModelConfig
from pipeline.encode.model import ModelSpec
from pipeline.errors import QueryError
from pipeline.index.store.directory import IndexDirectory
from pipeline.index.store.format import IndexInfo
from pipeline.search.limits import check_k
from pipeline.search.plan import stored_vectors
from pipeline.search.query_model import resolve_query_model

MAX_QUERY_IMAGE_PIXELS = 89_478_485  # PIL's own decompression-bomb limit, as embed's max_image_pixels default
_MISSING_SCORE = np.float32(np.nan)


@dataclass
class SearchResult:
    """``n`` queries' ``k`` best hits, best first (highest inner product; lowest distance under metric l2)."""

    scores: np.ndarray  # (n, min(k, ntotal)) float32; NaN where an approximate search found fewer hits
    ids: np.ndarray  # (n, min(k, ntotal)) object array of str; None where there is no hit
    items: list[list[dict[str, Any]]]  # per query, per hit: the metadata row (id, source, text, …) + "score"
    plan: dict[str, Any] | None = None  # a filtered search's plan (pipeline.search.plan.Plan.to_dict)

    def __len__(self) -> int:
        return len(self.scores)


class Searcher:
    """Nearest items of an index directory to vectors, texts or images.

    Not thread-safe: the query encoder reuses buffers between calls. Use one Searcher per thread, or
    call it from one thread (the serve app calls it from a single worker thread). FAISS searches of the
    memory-mapped index are shared by all the processes that open it.
    """

    def __init__(
        self, directory: IndexDirectory, model: SearchModelConfig | None = None, query_model: ModelSpec | None = None
    ) -> None:
        self.directory = directory
        self.model_config = model or SearchModelConfig()  # the index's own weights, on the best device here
        self.query_model = query_model  # a spec already checked against the index (by a job's driver), if any
        self._encoder = None
        self._encoder_lock = threading.Lock()
        self._columns = None  # the filterable columns (pipeline.search.columns), on the first where=
        # items.arrow's record batches, memory-mapped (zero-copy): a search takes its hits from them directly
        self._batches = list(directory.item_batches())

    @classmethod
    def open(
        cls,
        path: str | os.PathLike,
        model: SearchModelConfig | None = None,
        query_model: ModelSpec | None = None,
        verify: str = "quick",
    ) -> Searcher:
        """Open the index directory at ``path`` (memory-mapped); the encoder is built on first use.

        ``query_model``: the encoder's ModelSpec as ``resolve_query_model`` returned it elsewhere (Ray actors
        get it from the driver, which checked it once); by default it is resolved here from ``model``.
        ``verify``: "quick" (sizes; files up to 16 MiB hashed) or "full" (every file hashed now)."""
        return cls(IndexDirectory.open(path, verify=verify), model, query_model)

    # --- what the index is ---------------------------------------------------------------------

    @property
    def info(self) -> IndexInfo:
        return self.directory.info

    @property
    def dim(self) -> int:
        return self.info.dim

    @property
    def ntotal(self) -> int:
        return self.info.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def fingerprint(self) -> dict[str, Any] | None:
        """The model fingerprint the index's vectors came from (None: vectors from elsewhere, e.g. .npy)."""
        embedding = self.info.embedding
        return embedding.model if embedding is not None else None

    @property
    def encoder(self):
        """The query encoder (a ClipEncoder), built on first use from the index's model fingerprint."""
        with self._encoder_lock:
            if self._encoder is None:
                from pipeline.encode.encoder import ClipEncoder

                spec = self.query_model or resolve_query_model(self.info, self.model_config)
                self._encoder = ClipEncoder(spec)
            return self._encoder

    # --- queries -------------------------------------------------------------------------------

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> n x dim float32 unit vectors, with the index's model."""
        texts = _check_texts(texts)
        return self.encoder.encode_texts(texts)

    def encode_images(self, images: Sequence[Any]) -> np.ndarray:
        """Images (paths, encoded bytes or PIL images) -> n x dim float32 unit vectors, with the index's model."""
        decoded = _decode_images(images)
        return self.encoder.encode_images(decoded)

    def search(
        self,
        *,
        vectors: Any = None,
        texts: Sequence[str] | None = None,
        images: Sequence[Any] | None = None,
        terms: Sequence[Any] | str | None = None,
        k: int = 10,
        with_items: bool = True,
        where: str | None = None,
        mode: str = "vector",
        keywords: Sequence[str] | None = None,
        keyword_weight: float = 1.0,
    ) -> SearchResult:
        """The ``k`` nearest items to each query; exactly one of ``vectors``, ``texts``, ``images``, ``terms``.

        ``where``: only items whose metadata satisfy this predicate (docs/search.md#filters); checked before
        any query is encoded (a FilterError, a LatentError, when it is malformed or does not fit the columns).
        ``mode``: ``vector`` (default), ``keyword`` (BM25 over the items' text) or ``hybrid`` (both, fused by
        reciprocal rank fusion, the keyword list weighing ``keyword_weight``; pipeline.search.hybrid); the
        words are ``keywords`` (one string per query) or else ``texts``. Needs an index built with index.text.

        ``terms``: one query weighing several terms (pipeline.search.terms: a list of Term, or the expression
        ``"id:ID + 'text' - 0.5*'text'"``). ``with_items=False`` skips reading the hits' metadata rows (``items``
        is then a list of empty lists)."""
        pairs = (("vectors", vectors), ("texts", texts), ("images", images), ("terms", terms))
        given = {name: value for name, value in pairs if value is not None}
        if mode != "vector" or keywords is not None:
            from pipeline.search.hybrid import hybrid_search

            words = keywords if keywords is not None else texts
            return hybrid_search(self, mode, words, given, k, with_items, where, keyword_weight)
        if len(given) != 1:
            raise QueryError(f"give exactly one of vectors, texts, images or terms (got {', '.join(given) or 'none'})")
        k = check_k(k, self.ntotal, error=QueryError)  # before anything is encoded or allocated
        if where is not None:
            self.columns.mask(where)  # checked (and its mask computed) before anything is encoded
        queries = self.encode(vectors, texts, images, terms)
        return self.search_vectors(queries, k, with_items, where)

    @property
    def columns(self):
        """The index's filterable metadata columns (pipeline.search.columns.ItemColumns), opened on first use."""
        with self._encoder_lock:
            if self._columns is None:
                from pipeline.search.columns import ItemColumns

                self._columns = ItemColumns(self.directory)
            return self._columns

    def search_vectors(
        self, queries: np.ndarray, k: int, with_items: bool = True, where: str | None = None
    ) -> SearchResult:
        """FAISS search of an n x dim float32 array already checked (and normalised) by ``search``; ``k`` is
        bounded here too (1..MAX_K, and the index size), so results are at most n x min(MAX_K, ntotal).
        ``where``: the planner (pipeline.search.plan) searches only the rows that satisfy it."""
        k = check_k(k, self.ntotal, error=QueryError)
        scores, labels, plan = self.search_labels(queries, k, where)
        return self.result(scores, labels, with_items, plan)

    def search_labels(
        self, queries: np.ndarray, k: int, where: str | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any] | None]:
        """(scores, labels, the filtered plan) of ``search_vectors``, before the hits' rows are read."""
        n = len(queries)
        plan = None
        if where is not None and n and k:
            from pipeline.search.plan import plan_search, run_plan

            checked, mask = self.columns.mask(where)
            index = self.directory.index
            queries = np.ascontiguousarray(queries, dtype=np.float32)
            if hasattr(index, "search_filtered"):  # remote shards (Ray Serve): each plans and runs its slice
                scores, labels, plan = index.search_filtered(queries, k, mask, checked.text, self.info.metric)
            else:
                chosen = plan_search(index, mask, k, checked.text, self.info.qps, self.info.exact_qps)
                with self._encoder_lock:  # an exact plan may build an IVF direct map once
                    scores, labels = run_plan(chosen, index, mask, queries, k, self.info.metric)
                plan = chosen.to_dict()
            scores = self.directory.check_scores(scores, labels)
        elif n and k:
            scores, labels = self.directory.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
            scores = self.directory.check_scores(scores, labels)
        else:
            scores, labels = np.full((n, k), _MISSING_SCORE, np.float32), np.full((n, k), -1, np.int64)
        scores[labels < 0] = _MISSING_SCORE
        return scores, labels, plan

    def result(
        self, scores: np.ndarray, labels: np.ndarray, with_items: bool = True, plan: dict[str, Any] | None = None
    ) -> SearchResult:
        """A SearchResult of (n, k) ``scores`` and FAISS ``labels`` (-1: no hit): ids and metadata rows."""
        n, k = labels.shape
        if not with_items:
            ids = np.empty(labels.size, dtype=object)
            ids[:] = self._rows(labels, ["id"]).column("id").to_pylist()
            return SearchResult(scores=scores, ids=ids.reshape(n, k), items=[[] for _ in range(n)], plan=plan)
        table = self._rows(labels)  # one pass over items.arrow for all n x k hits
        names = [*table.column_names, "score"]
        columns = [table.column(name).to_pylist() for name in table.column_names]  # column-wise: 2x faster
        rows = [dict(zip(names, values)) for values in zip(*columns, scores.reshape(-1).tolist())]
        hit = (labels >= 0).reshape(-1)
        ids = np.empty(labels.size, dtype=object)
        ids[:] = [row["id"] if ok else None for row, ok in zip(rows, hit)]
        items = [[rows[p] for p in range(q * k, (q + 1) * k) if hit[p]] for q in range(n)]
        return SearchResult(scores=scores, ids=ids.reshape(n, k), items=items, plan=plan)

    def _rows(self, labels: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """Metadata rows of FAISS ``labels`` (flattened, in order; null rows for -1): IndexDirectory.items
        without its per-call batch lookups, one ``take`` per record batch touched."""
        labels = labels.reshape(-1)
        valid = labels >= 0
        where = np.flatnonzero(valid)
        order = np.argsort(labels[where], kind="stable")
        wanted = labels[where][order]
        rows = self.info.items_batch_rows
        batch_of, row_in = wanted // rows, wanted % rows
        bounds = [0, *(np.flatnonzero(np.diff(batch_of)) + 1).tolist(), len(wanted)]
        schema = self.directory.item_schema
        parts = []
        for start, end in zip(bounds[:-1], bounds[1:]):
            if end > start:
                batch = self._batches[int(batch_of[start])]
                parts.append((batch if columns is None else batch.select(columns)).take(row_in[start:end]))
        if columns is not None:
            schema = pa.schema([schema.field(c) for c in columns])
        table = pa.Table.from_batches(parts, schema=schema)
        position = np.zeros(len(labels), dtype=np.int64)
        position[where[order]] = np.arange(len(order))  # row j of ``table`` answers position where[order[j]]
        return table.take(pa.array(position, mask=~valid))

    def encode(self, vectors: Any = None, texts: Any = None, images: Any = None, terms: Any = None) -> np.ndarray:
        """The query vectors of exactly one of ``vectors``, ``texts``, ``images``, ``terms`` (as ``search``)."""
        if terms is not None:
            from pipeline.search.terms import combine_terms, parse_terms

            return combine_terms(self, parse_terms(terms) if isinstance(terms, str) else terms)
        if vectors is not None:
            return self._check_vectors(vectors)
        if texts is not None:
            return self.encode_texts(texts)
        return self.encode_images(images)

    def _check_vectors(self, vectors: Any) -> np.ndarray:
        try:
            queries = np.array(vectors, dtype=np.float32)
        except (TypeError, ValueError) as err:
            raise QueryError(f"vectors: not an array of numbers ({err})") from err
        if queries.ndim == 1:
            queries = queries.reshape(1, -1)
        if queries.ndim != 2 or queries.shape[1] != self.dim or queries.shape[0] == 0:
            raise QueryError(f"vectors: expected n x {self.dim} (n >= 1, dim of the index), got shape {queries.shape}")
        if not np.isfinite(queries).all():
            raise QueryError("vectors: NaN or infinite values")
        if self.info.normalized:
            norms = np.linalg.norm(queries, axis=1, keepdims=True)
            if (norms == 0).any():
                raise QueryError("vectors: a zero vector has no direction (the index is searched by cosine)")
            queries /= norms
        return queries

    # --- items ---------------------------------------------------------------------------------

    def item(self, id: str) -> dict[str, Any] | None:
        """The metadata row of the item ``id`` (None if the index does not hold it)."""
        label = self.directory.label_of(id)
        return None if label is None else self.directory.items([label]).to_pylist()[0]

    def vector(self, id: str) -> np.ndarray | None:
        """The stored vector of ``id`` when FAISS can reconstruct it (exact for flat codes, approximate for
        PQ), for "search by this result"; None when the id is unknown or the index cannot reconstruct.
        A stored vector damaged on disk (off unit length on a normalised index) is an IndexCorrupted."""
        label = self.directory.label_of(id)
        if label is None:
            return None
        vector = self._reconstruct(int(label))
        return None if vector is None else self.directory.check_stored(int(label), vector)

    def _reconstruct(self, label: int) -> np.ndarray | None:
        """The stored vector of ``label``, as the planner reads them (the shard that holds it; an IVF direct
        map built once); None where this index cannot give it back."""
        with self._encoder_lock:  # building an IVF direct map must not race another reader
            try:
                return stored_vectors(self.directory.index, np.array([label], dtype=np.int64))[0]
            except (RuntimeError, IndexError):
                return None


# --- checks and decoding ----------------------------------------------------------------------------


def _check_texts(texts: Sequence[str]) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise QueryError("texts: no query (an empty list)")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise QueryError(f"texts[{i}]: expected a string, got {type(text).__name__}")
        if not text.strip():
            raise QueryError(f"texts[{i}]: empty text")
    return texts


def decode_query_image(image: Any, i: int = 0) -> Image.Image:
    """A query image (path, encoded bytes or PIL image) as a PIL image; QueryError names ``images[i]``."""
    from pipeline.encode.preprocess import BadImage, decode_image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        where = f"images[{i}] ({len(data)} bytes)"
    elif isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise QueryError(f"images[{i}]: no such file: {path}")
        data = path.read_bytes()
        where = f"images[{i}] ({path})"
    else:
        raise QueryError(f"images[{i}]: expected a path, bytes or a PIL image, got {type(image).__name__}")
    try:
        return decode_image(data, MAX_QUERY_IMAGE_PIXELS)
    except BadImage as err:
        raise QueryError(f"{where}: not a usable image: {err}") from err


def _decode_images(images: Sequence[Any]) -> list[Image.Image]:
    if isinstance(images, (str, bytes, os.PathLike, Image.Image)):
        images = [images]
    images = list(images)
    if not images:
        raise QueryError("images: no query (an empty list)")
    return [decode_query_image(image, i) for i, image in enumerate(images)]
