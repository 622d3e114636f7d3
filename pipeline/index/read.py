"""Embedding inputs of the index: find the shards, validate them, stream (vectors, items) in batches.

Inputs: an embedding dataset (docs/embedding-dataset.md) or any Parquet folder with an embedding
column; a folder of ``.npy`` files; clip-retrieval's output (``img_emb/``, ``text_emb/``, ``metadata/``).
``scan`` finds schema-level problems (no or several embedding columns, mixed dimensions or models)
from the files' footers and headers before any vector is read; ``check_vectors`` finds value
problems (NaN/inf, vectors that are not unit-length under metric ip) batch by batch as they stream.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import LatentError
from pipeline.io.shards import (
    EMBEDDING_SUFFIX,
    METADATA_KEY,
    STATE_DIR,
    EmbeddingInfo,
    arrow_to_vectors,
    filesystem,
    list_shards,
)

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
class Shard:
    path: str  # a Parquet or .npy file
    rows: int
    name: str  # path relative to the input, without extension: default ids are "<name>:<row>"
    metadata: str | None = None  # .npy: the aligned metadata Parquet, if any


@dataclass
class EmbeddingSource:
    """A scanned input: its shards and what their vectors are. Cheap to pickle (paths only)."""

    root: str
    kind: str  # "parquet" | "npy"
    column: str
    dim: int
    shards: list[Shard]
    embedding: EmbeddingInfo | None  # the dataset's EmbeddingInfo (None for foreign inputs)
    item_schema: pa.Schema  # id, source, text, passed-through columns

    @property
    def rows(self) -> int:
        return sum(s.rows for s in self.shards)

    @property
    def offsets(self) -> np.ndarray:
        """Global row of each shard's first row (and the total at the end)."""
        return np.concatenate([[0], np.cumsum([s.rows for s in self.shards])]).astype(np.int64)


@dataclass
class Batch:
    vectors: np.ndarray  # float32 (n, dim), C-contiguous
    items: pa.Table | None  # rows of item_schema, aligned with vectors (None when not asked for)
    shard: int
    first: int  # global row of the first vector (rows count shards in order)


# --- validation ----------------------------------------------------------------------------------


def check_vectors(vectors: np.ndarray, where: str, metric: str, first_row: int = 0) -> None:
    """Raise LatentError naming the first bad row: NaN/inf, or not unit-length under metric ip."""
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        row = first_row + int(np.flatnonzero(~finite)[0])
        raise LatentError(f"{where}: row {row} has NaN or infinite values; fix or drop those rows")
    if metric == "ip" and len(vectors):
        norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
        bad = np.abs(norms - 1.0) > NORM_TOLERANCE
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise LatentError(
                f"{where}: row {first_row + row} is not unit-length (norm {norms[row]:.4g}); metric ip is "
                f"cosine only on normalised vectors: L2-normalise them, or use index.metric=l2"
            )


def _is_vector_type(t: pa.DataType) -> bool:
    return (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and (
        pa.types.is_floating(t.value_type)
    )


def embedding_columns(schema: pa.Schema) -> list[str]:
    """Columns that hold vectors by the dataset contract: ``embedding`` or ``*_embedding`` float lists."""
    return [
        f.name
        for f in schema
        if _is_vector_type(f.type) and (f.name == NPY_COLUMN or f.name.endswith(EMBEDDING_SUFFIX))
    ]


def _pick_column(found: list[str], requested: str | None, where: str, all_columns: Sequence[str]) -> str:
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


def _unify(schemas: list[pa.Schema], where: str) -> pa.Schema:
    try:
        return pa.unify_schemas(schemas, promote_options="permissive") if schemas else pa.schema([])
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise LatentError(f"{where}: shards have incompatible metadata columns: {err}") from err


def _item_schema(passthrough: pa.Schema) -> pa.Schema:
    names = {f.name for f in ITEM_FIELDS}
    return pa.schema([*ITEM_FIELDS, *(f.with_nullable(True) for f in passthrough if f.name not in names)])


# --- scanning ------------------------------------------------------------------------------------


def _url(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """What readers (and Ray tasks) reopen a file by: its path, with the protocol when not local."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def scan(path: str, column: str | None = None) -> EmbeddingSource:
    """Find and check the shards at ``path`` (files' footers and headers only)."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise LatentError(f"input.path={path}: no such file or directory")
    if fs.isdir(root):
        subdirs = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False) if fs.isdir(p)}
        if subdirs & set(CLIP_RETRIEVAL_COLUMNS):
            return _scan_clip_retrieval(fs, root, sorted(subdirs & set(CLIP_RETRIEVAL_COLUMNS)), column)
        npys = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".npy"))
        if npys:
            name = posixpath.basename(root)
            metadata = posixpath.join(posixpath.dirname(root), "metadata")
            if name in CLIP_RETRIEVAL_COLUMNS and fs.isdir(metadata):  # clip-retrieval's img_emb/ given directly
                return _scan_npy(fs, root, npys, name, column, metadata)
            return _scan_npy(fs, root, npys, NPY_COLUMN, column, None)
        return _scan_parquet(fs, root, list_shards(path), column)
    if root.endswith(".npy"):
        return _scan_npy(fs, posixpath.dirname(root), [root], NPY_COLUMN, column, None)
    return _scan_parquet(fs, posixpath.dirname(root), [root], column)


def _relative_name(root: str, path: str) -> str:
    return posixpath.splitext(posixpath.relpath(path, root))[0]


def _scan_parquet(fs: fsspec.AbstractFileSystem, root: str, paths: list[str], column: str | None) -> EmbeddingSource:
    if not paths:
        raise LatentError(f"input.path={root}: empty dataset (no Parquet or .npy shards)")
    shards, infos, passthrough = [], [], []
    chosen = dim = None
    for path in paths:
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
            schema = meta.schema.to_arrow_schema()
        name = posixpath.basename(path)
        if chosen is None:
            chosen = _pick_column(embedding_columns(schema), column, name, schema.names)
        if chosen not in schema.names:
            raise LatentError(f"shard {name} has no column '{chosen}' (the other shards have it)")
        vector_type = schema.field(chosen).type
        if not _is_vector_type(vector_type):
            raise LatentError(f"column '{chosen}' of {name} is {vector_type}, not a list of floats")
        if pa.types.is_fixed_size_list(vector_type):
            if dim is not None and vector_type.list_size != dim:
                raise LatentError(
                    f"mixed dimensions: shard {name} has {vector_type.list_size}-d vectors, earlier shards {dim}-d"
                )
            dim = vector_type.list_size
        meta_kv = schema.metadata or {}
        infos.append((name, EmbeddingInfo.from_json(meta_kv[METADATA_KEY]) if METADATA_KEY in meta_kv else None))
        drop = set(embedding_columns(schema)) | {chosen}
        passthrough.append(pa.schema([f for f in schema if f.name not in drop]))
        shards.append(Shard(path=_url(fs, path), rows=meta.num_rows, name=_relative_name(root, path)))
    embedding = _common_info(fs, root, infos)
    if embedding is not None:
        if dim is not None and dim != embedding.dim:
            raise LatentError(f"column '{chosen}' holds {dim}-d vectors but the dataset metadata says {embedding.dim}")
        dim = embedding.dim
    source = EmbeddingSource(
        root, "parquet", chosen, dim or 0, shards, embedding, _item_schema(_unify(passthrough, root))
    )
    if source.rows == 0:
        raise LatentError(f"input.path={root}: empty dataset (0 rows in {len(shards)} shards)")
    if not source.dim:  # variable-length lists: the first vector tells
        first = next(s for s in shards if s.rows)
        source.dim = int(next(_iter_parquet(source, first, 1, items=False))[1].shape[1])
    return source


def _common_info(fs: fsspec.AbstractFileSystem, root: str, infos: list[tuple[str, EmbeddingInfo | None]]):
    """The dataset's EmbeddingInfo, after checking every shard agrees with it (None if none has one)."""
    recorded = posixpath.join(root, STATE_DIR, "embedding.json")
    reference = EmbeddingInfo.from_json(fs.cat_file(recorded)) if fs.exists(recorded) else None
    with_info = [(name, info) for name, info in infos if info is not None]
    if not with_info:
        return reference
    if len(with_info) < len(infos):
        bare = next(name for name, info in infos if info is None)
        raise LatentError(
            f"mixed inputs: shard {bare} has no embedding metadata ({METADATA_KEY.decode()}) while "
            f"{with_info[0][0]} has: are they from the same model?"
        )
    first_name, first = with_info[0]
    reference = reference or first
    for name, info in with_info:
        problems = reference.compatible_with(info)
        if problems:
            raise LatentError(
                f"mixed models or dimensions: shard {name} differs from {first_name}: {'; '.join(problems)}"
            )
    return reference


_NPY_DTYPES = {np.dtype("float16"), np.dtype("float32"), np.dtype("float64")}
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _npy_header(fs: fsspec.AbstractFileSystem, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, data offset) of a .npy file, from its header only."""
    with fs.open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran, dtype = _NPY_HEADER_READERS[version](f)
        except ValueError as err:
            raise LatentError(f"{posixpath.basename(path)} is not a valid .npy file: {err}") from err
        offset = f.tell()
    name = posixpath.basename(path)
    if len(shape) != 2 or fortran or dtype not in _NPY_DTYPES:
        raise LatentError(f"{name}: expected a 2-d C-order float array, got shape {shape}, dtype {dtype}")
    return shape, dtype, offset


def _metadata_for(fs: fsspec.AbstractFileSystem, npy: str, metadata_dir: str | None) -> str | None:
    stem = posixpath.splitext(posixpath.basename(npy))[0]
    if metadata_dir is not None:  # clip-retrieval: img_emb_<n>.npy <-> metadata_<n>.parquet
        number = re.search(r"(\d+)$", stem)
        candidate = posixpath.join(metadata_dir, f"metadata_{number.group(1)}.parquet") if number else None
    else:  # a plain folder: <stem>.parquet next to <stem>.npy
        candidate = posixpath.join(posixpath.dirname(npy), f"{stem}.parquet")
    return candidate if candidate and fs.exists(candidate) else None


def _scan_clip_retrieval(fs: fsspec.AbstractFileSystem, root: str, found: list[str], column: str | None):
    chosen = _pick_column(found, column, root, found)
    folder = posixpath.join(root, chosen)
    npys = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".npy"))
    return _scan_npy(fs, folder, npys, chosen, None, posixpath.join(root, "metadata"))


def _scan_npy(
    fs: fsspec.AbstractFileSystem,
    root: str,
    paths: list[str],
    name: str,
    column: str | None,
    metadata_dir: str | None,
) -> EmbeddingSource:
    if column is not None and column != name:
        raise LatentError(f"input.column={column}: the .npy input at {root} has one column, '{name}'")
    if not paths:
        raise LatentError(f"input.path={root}: empty dataset (no .npy files)")
    shards, schemas = [], []
    dim = None
    for path in paths:
        (rows, d), _, _ = _npy_header(fs, path)
        if dim is not None and d != dim:
            raise LatentError(f"mixed dimensions: {posixpath.basename(path)} has {d}-d vectors, earlier files {dim}-d")
        dim = d
        metadata = _metadata_for(fs, path, metadata_dir)
        if metadata is not None:
            with fs.open(metadata, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            if meta.num_rows != rows:
                raise LatentError(
                    f"{posixpath.basename(metadata)} has {meta.num_rows} rows but {posixpath.basename(path)} has "
                    f"{rows} vectors: they must be aligned row by row"
                )
            schemas.append(meta.schema.to_arrow_schema().remove_metadata())
        stem = posixpath.splitext(posixpath.basename(path))[0]
        metadata = metadata and _url(fs, metadata)
        shards.append(Shard(path=_url(fs, path), rows=rows, name=stem, metadata=metadata))
    source = EmbeddingSource(root, "npy", name, dim, shards, None, _item_schema(_unify(schemas, root)))
    if source.rows == 0:
        raise LatentError(f"input.path={root}: empty dataset (0 vectors in {len(shards)} .npy files)")
    return source


# --- reading -------------------------------------------------------------------------------------


def _first_present(table: pa.Table, names: Sequence[str]) -> pa.ChunkedArray | None:
    for name in names:
        if name in table.column_names:
            return table.column(name)
    return None


def make_items(source: EmbeddingSource, shard: Shard, start: int, n: int, table: pa.Table | None) -> pa.Table:
    """Item rows (id, source, text, passed-through columns) for rows ``start..start+n`` of ``shard``."""
    table = table if table is not None else pa.table({})
    columns: dict[str, Any] = {}
    if "id" in table.column_names:
        ids = table.column("id").cast(pa.string())
        if ids.null_count:
            raise LatentError(f"{posixpath.basename(shard.path)}: {ids.null_count} rows have a null id")
        columns["id"] = ids
    else:
        columns["id"] = pa.array([f"{shard.name}:{row}" for row in range(start, start + n)], pa.string())
    for name, guesses in (("source", SOURCE_GUESSES), ("text", TEXT_GUESSES)):
        found = _first_present(table, guesses)
        columns[name] = found.cast(pa.string()) if found is not None else pa.nulls(n, pa.string())
    for field in source.item_schema:
        if field.name not in columns:
            columns[field.name] = (
                table.column(field.name) if field.name in table.column_names else pa.nulls(n, field.type)
            )
    return pa.table(columns).cast(source.item_schema)


class _Rechunker:
    """Cuts a stream of record batches into tables of the sizes asked for."""

    def __init__(self, batches: Iterator[pa.RecordBatch]) -> None:
        self._batches = batches
        self._buffer: list[pa.RecordBatch] = []
        self._rows = 0

    def take(self, n: int) -> pa.Table:
        while self._rows < n:
            batch = next(self._batches)
            self._buffer.append(batch)
            self._rows += batch.num_rows
        table = pa.Table.from_batches(self._buffer)
        head, rest = table.slice(0, n), table.slice(n)
        self._buffer, self._rows = rest.to_batches(), rest.num_rows
        return head


def _iter_parquet(source: EmbeddingSource, shard: Shard, batch_size: int, items: bool):
    fs, _ = filesystem(shard.path)
    with fs.open(shard.path, "rb") as f:
        parquet = pq.ParquetFile(f)
        present = set(parquet.schema_arrow.names)
        wanted = [source.column]
        if items:
            wanted += [c for c in present if c != source.column and c not in embedding_columns(parquet.schema_arrow)]
        start = 0
        for batch in parquet.iter_batches(batch_size=batch_size, columns=wanted):
            vectors = arrow_to_vectors(batch.column(source.column))
            yield start, vectors, (pa.Table.from_batches([batch]).drop_columns([source.column]) if items else None)
            start += batch.num_rows


def _iter_npy(source: EmbeddingSource, shard: Shard, batch_size: int, items: bool):
    fs, _ = filesystem(shard.path)
    (rows, dim), dtype, offset = _npy_header(fs, shard.path)
    meta_file = fs.open(shard.metadata, "rb") if items and shard.metadata else None
    try:
        metadata = _Rechunker(pq.ParquetFile(meta_file).iter_batches(batch_size=batch_size)) if meta_file else None
        with fs.open(shard.path, "rb") as f:
            f.seek(offset)
            for start in range(0, rows, batch_size):
                n = min(batch_size, rows - start)
                data = f.read(n * dim * dtype.itemsize)
                if len(data) != n * dim * dtype.itemsize:
                    raise LatentError(f"{posixpath.basename(shard.path)} is truncated (expected {rows} rows)")
                vectors = np.frombuffer(data, dtype=dtype).reshape(n, dim)
                yield start, vectors, (metadata.take(n) if metadata else None)
    finally:
        if meta_file is not None:
            meta_file.close()


def iter_batches(
    source: EmbeddingSource,
    batch_size: int,
    *,
    metric: str,
    shards: Sequence[int] | None = None,
    items: bool = True,
) -> Iterator[Batch]:
    """Stream the input (or the ``shards`` given by index) in batches, checking each batch's vectors."""
    offsets = source.offsets
    reader = _iter_parquet if source.kind == "parquet" else _iter_npy
    for s in range(len(source.shards)) if shards is None else shards:
        shard = source.shards[s]
        for start, raw, table in reader(source, shard, batch_size, items):
            if raw.ndim != 2 or raw.shape[1] != source.dim:
                raise LatentError(
                    f"mixed dimensions: {posixpath.basename(shard.path)} has {raw.shape[-1]}-d vectors, "
                    f"expected {source.dim}"
                )
            vectors = np.ascontiguousarray(raw, dtype=np.float32)
            if metric != "none":
                check_vectors(vectors, posixpath.basename(shard.path), metric, first_row=start)
            item_rows = make_items(source, shard, start, len(vectors), table) if items else None
            yield Batch(vectors, item_rows, s, int(offsets[s]) + start)


def read_rows(source: EmbeddingSource, rows: Sequence[np.ndarray], batch_size: int, metric: str) -> list[np.ndarray]:
    """The vectors of each set of global ``rows`` (each sorted, unique), in one pass over the shards
    that hold any of them; each vector lands directly in its set's array (nothing is held twice)."""
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    out = [np.empty((len(r), source.dim), dtype=np.float32) for r in rows]
    offsets = source.offsets
    wanted = [
        s for s in range(len(source.shards)) if any(np.any((r >= offsets[s]) & (r < offsets[s + 1])) for r in rows)
    ]
    for batch in iter_batches(source, batch_size, metric=metric, shards=wanted, items=False):
        for r, o in zip(rows, out):
            lo, hi = np.searchsorted(r, [batch.first, batch.first + len(batch.vectors)])
            o[lo:hi] = batch.vectors[r[lo:hi] - batch.first]
    return out
