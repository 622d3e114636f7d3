"""An embedding input of the index, described: its files (the dataset's Parquet shards or .npy files),
the rows' item schema, and the checks every reader applies (which columns hold vectors, which one is
chosen, finite and unit-length vectors). Scanned by ``read.scan`` (Parquet) and ``npy`` (.npy folders,
clip-retrieval's output), read by ``read.iter_batches``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import fsspec
import numpy as np
import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import LatentError
from pipeline.io.shards import EMBEDDING_SUFFIX, EmbeddingInfo

NORM_TOLERANCE = 1e-2  # |norm - 1| allowed for "unit" vectors (float16 storage rounds to ~1e-3)
SOURCE_GUESSES = ("source", "image_path", "url", "path")  # where `source` comes from, in order
TEXT_GUESSES = ("text", "caption")
CLIP_RETRIEVAL_COLUMNS = ("img_emb", "text_emb")
NPY_COLUMN = "embedding"  # the one column of a plain .npy folder
ITEM_FIELDS = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("source", pa.string()),
    pa.field("text", pa.string()),
]


@dataclass(frozen=True)
class InputFile:
    path: str  # a Parquet or .npy file
    rows: int  # rows with a vector: what is read and indexed (the file's rows less ``null_rows``)
    name: str  # path relative to the input, without extension: default ids are "<name>:<row>"
    metadata: str | None = None  # .npy: the aligned metadata Parquet, if any
    null_rows: int = 0  # rows whose vector is null (modality=auto: no caption): skipped by every reader


@dataclass
class EmbeddingSource:
    """A scanned input: its files and what their vectors are. Cheap to pickle (paths only)."""

    root: str
    kind: str  # "parquet" | "npy"
    column: str
    dim: int
    files: list[InputFile]
    embedding: EmbeddingInfo | None  # the dataset's EmbeddingInfo (None for foreign inputs)
    item_schema: pa.Schema  # id, source, text, passed-through columns

    @property
    def rows(self) -> int:
        """Rows with a vector (global rows count these only: rows with a null vector are never read)."""
        return sum(s.rows for s in self.files)

    @property
    def null_rows(self) -> int:
        """Rows of the input whose vector is null, left out."""
        return sum(s.null_rows for s in self.files)

    @property
    def offsets(self) -> np.ndarray:
        """Global row of each shard's first row with a vector (and the total at the end)."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.files])]).astype(np.int64)


@dataclass
class Batch:
    vectors: np.ndarray  # float32 (n, dim), C-contiguous
    items: pa.Table | None  # rows of item_schema, aligned with vectors (None when not asked for)
    file: int  # the file's position in EmbeddingSource.files
    first: int  # global row of the first vector (rows with a vector, counted over the shards in order)
    rows: np.ndarray  # each vector's row in its shard's file (rows with a null vector skipped)


def check_vectors(vectors: np.ndarray, where: str, metric: str, rows: np.ndarray | None = None) -> None:
    """Raise LatentError naming the first bad row (``rows``: each vector's row in ``where``; default 0..n-1):
    NaN/inf, or not unit-length under metric ip."""
    rows = np.arange(len(vectors)) if rows is None else rows
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = int(rows[np.flatnonzero(~finite)[0]])
        raise LatentError(f"{where}: row {row} has NaN or infinite values; fix or drop those rows")
    if metric == "ip" and len(vectors):
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        bad = np.abs(norms - 1.0) > NORM_TOLERANCE
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise LatentError(
                f"{where}: row {int(rows[row])} is not unit-length (norm {norms[row]:.4g}); metric ip is "
                f"cosine only on normalised vectors: L2-normalise them, or use index.metric=l2"
            )


def is_vector_type(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def embedding_columns(schema: pa.Schema) -> list[str]:
    """Columns that hold vectors by the dataset contract: ``embedding`` or ``*_embedding`` float lists."""
    return [
        f.name for f in schema if is_vector_type(f.type) and (f.name == NPY_COLUMN or f.name.endswith(EMBEDDING_SUFFIX))
    ]


def pick_embedding_column(found: list[str], requested: str | None, where: str, all_columns: Sequence[str]) -> str:
    if requested is not None:
        if requested not in all_columns:
            raise LatentError(
                f"input.column={requested}: no such column in {where} (columns: {', '.join(all_columns)})"
            )
        return requested
    if not found:
        raise LatentError(
            f"{where} has no embedding column (a float list column named `embedding` or `*_embedding`; "
            f"columns: {', '.join(all_columns)}); set input.column"
        )
    if len(found) > 1:
        raise LatentError(f"{where} has several embedding columns: {', '.join(found)}; choose one with input.column=")
    return found[0]


def unify_schemas(schemas: list[pa.Schema], where: str) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise LatentError(f"{where}: shards have incompatible metadata columns: {err}") from err


def item_schema_of(passthrough: pa.Schema) -> pa.Schema:
    names = {f.name for f in ITEM_FIELDS}
    return pa.schema([*ITEM_FIELDS, *(f.with_nullable(True) for f in passthrough if f.name not in names)])


def file_url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """What readers (and Ray tasks) reopen a file by: its path, with the protocol when not local."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)
