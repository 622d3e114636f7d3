"""Embedding inputs of the index: find the shards, validate them, stream (vectors, items) in batches.

Inputs: an embedding dataset (docs/embedding-dataset.md) or any Parquet folder with an embedding
column; a folder of ``.npy`` files; clip-retrieval's output (``img_emb/``, ``text_emb/``, ``metadata/``).
``scan`` finds schema-level problems (no or several embedding columns, mixed dimensions or models)
from the files' footers and headers before any vector is read; ``check_vectors`` finds value
problems (NaN/inf, vectors that are not unit-length under metric ip) batch by batch as they stream.
Here: ``scan``, the Parquet reader, ``iter_batches`` and ``read_rows``; the .npy inputs in ``npy``; the
description of an input (``EmbeddingSource``) and the checks in ``embeddings``.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LatentError
from pipeline.index.input.embeddings import (
    CLIP_RETRIEVAL_COLUMNS,
    NPY_COLUMN,
    SOURCE_GUESSES,
    TEXT_GUESSES,
    Batch,
    EmbeddingSource,
    InputFile,
    check_vectors,
    embedding_columns,
    file_url,
    is_vector_type,
    item_schema_of,
    pick_embedding_column,
    unify_schemas,
)
from pipeline.index.input.npy import iter_npy, scan_clip_retrieval, scan_npy
from pipeline.io.shards import (
    METADATA_KEY,
    STATE_DIR,
    EmbeddingInfo,
    arrow_to_vectors,
    filesystem,
    list_shards,
)

# --- scanning ------------------------------------------------------------------------------------


def scan(path: str, column: str | None = None) -> EmbeddingSource:
    """Find and check the shards at ``path`` (files' footers and headers only)."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise LatentError(f"input.path={path}: no such file or directory")
    if fs.isdir(root):
        subdirs = {posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False) if fs.isdir(p)}
        if subdirs & set(CLIP_RETRIEVAL_COLUMNS):
            return scan_clip_retrieval(fs, root, sorted(subdirs & set(CLIP_RETRIEVAL_COLUMNS)), column)
        npys = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".npy"))
        if npys:
            name = posixpath.basename(root)
            metadata = posixpath.join(posixpath.dirname(root), "metadata")
            if name in CLIP_RETRIEVAL_COLUMNS and fs.isdir(metadata):  # clip-retrieval's img_emb/ given directly
                return scan_npy(fs, root, npys, name, column, metadata)
            return scan_npy(fs, root, npys, NPY_COLUMN, column, None)
        return _scan_parquet(fs, root, list_shards(path), column)
    if root.endswith(".npy"):
        return scan_npy(fs, posixpath.dirname(root), [root], NPY_COLUMN, column, None)
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
            chosen = pick_embedding_column(embedding_columns(schema), column, name, schema.names)
        if chosen not in schema.names:
            raise LatentError(f"shard {name} has no column '{chosen}' (the other shards have it)")
        vector_type = schema.field(chosen).type
        if not is_vector_type(vector_type):
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
        nulls = _null_vectors(fs, path, meta, chosen)
        shards.append(InputFile(file_url(fs, path), meta.num_rows - nulls, _relative_name(root, path), null_rows=nulls))
    embedding = _common_info(fs, root, infos)
    if embedding is not None:
        if dim is not None and dim != embedding.dim:
            raise LatentError(f"column '{chosen}' holds {dim}-d vectors but the dataset metadata says {embedding.dim}")
        dim = embedding.dim
    source = EmbeddingSource(
        root, "parquet", chosen, dim or 0, shards, embedding, item_schema_of(unify_schemas(passthrough, root))
    )
    if source.rows == 0 and source.null_rows:
        raise LatentError(
            f"input.column={chosen}: the column is null in all {source.null_rows} rows of input.path={root} "
            f"(no row has a vector to index; a dataset embedded with modality=auto has no text_embedding "
            f"where an image had no caption): choose another column"
        )
    if source.rows == 0:
        raise LatentError(f"input.path={root}: empty dataset (0 rows in {len(shards)} shards)")
    if not source.dim:  # variable-length lists: the first vector tells
        first = next(s for s in shards if s.rows)
        source.dim = int(next(_iter_parquet(source, first, 1, items=False))[1].shape[1])
    return source


def _null_vectors(fs: fsspec.AbstractFileSystem, path: str, meta: pq.FileMetaData, column: str) -> int:
    """Rows of a shard whose ``column`` is null. From the row groups' statistics when every one has them (a
    null vector is one null leaf value; ``_iter_parquet`` checks the count as it reads), else counted from
    the column, batch by batch."""
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    leaf = next(i for i, p in enumerate(paths) if p == column or p.startswith(f"{column}."))
    stats = [meta.row_group(g).column(leaf).statistics for g in range(meta.num_row_groups)]
    if all(s is not None and s.has_null_count for s in stats):
        return sum(s.null_count for s in stats)
    with fs.open(path, "rb") as f:
        return sum(b.column(0).null_count for b in pq.ParquetFile(f).iter_batches(columns=[column]))


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


# --- reading -------------------------------------------------------------------------------------


def _first_present(table: pa.Table, names: Sequence[str]) -> pa.ChunkedArray | None:
    for name in names:
        if name in table.column_names:
            return table.column(name)
    return None


def make_items(source: EmbeddingSource, shard: InputFile, rows: np.ndarray, table: pa.Table | None) -> pa.Table:
    """Item rows (id, source, text, passed-through columns) for the rows ``rows`` of ``shard``'s file."""
    n = len(rows)
    table = table if table is not None else pa.table({})
    columns: dict[str, Any] = {}
    if "id" in table.column_names:
        ids = table.column("id").cast(pa.string())
        if ids.null_count:
            raise LatentError(f"{posixpath.basename(shard.path)}: {ids.null_count} rows have a null id")
        columns["id"] = ids
    else:
        columns["id"] = pa.array([f"{shard.name}:{row}" for row in rows.tolist()], pa.string())
    for name, guesses in (("source", SOURCE_GUESSES), ("text", TEXT_GUESSES)):
        found = _first_present(table, guesses)
        columns[name] = found.cast(pa.string()) if found is not None else pa.nulls(n, pa.string())
    for field in source.item_schema:
        if field.name not in columns:
            columns[field.name] = (
                table.column(field.name) if field.name in table.column_names else pa.nulls(n, field.type)
            )
    return pa.table(columns).cast(source.item_schema)


def _iter_parquet(source: EmbeddingSource, shard: InputFile, batch_size: int, items: bool):
    fs, _ = filesystem(shard.path)
    with fs.open(shard.path, "rb") as f:
        parquet = pq.ParquetFile(f)
        present = set(parquet.schema_arrow.names)
        wanted = [source.column]
        if items:
            wanted += [c for c in present if c != source.column and c not in embedding_columns(parquet.schema_arrow)]
        start = nulls = 0
        for batch in parquet.iter_batches(batch_size=batch_size, columns=wanted):
            rows = np.arange(start, start + batch.num_rows)
            start += batch.num_rows
            column = batch.column(source.column)
            if column.null_count:  # rows without a vector are left out (counted by scan)
                nulls += column.null_count
                present = column.is_valid()
                batch, rows = batch.filter(present), rows[present.to_numpy(zero_copy_only=False)]
            if batch.num_rows:
                vectors = arrow_to_vectors(batch.column(source.column))
                yield rows, vectors, (pa.Table.from_batches([batch]).drop_columns([source.column]) if items else None)
    if nulls != shard.null_rows:  # the global rows were numbered from scan's count: it must be exact
        raise LatentError(
            f"{posixpath.basename(shard.path)}: {nulls} rows have a null {source.column}, but the file's Parquet "
            f"statistics count {shard.null_rows} null values in it (null values inside vectors, or empty lists?)"
        )


def iter_batches(
    source: EmbeddingSource,
    batch_size: int,
    *,
    metric: str,
    files: Sequence[int] | None = None,
    items: bool = True,
) -> Iterator[Batch]:
    """Stream the input (or the input ``files`` given by position) in batches, checking each batch's vectors."""
    offsets = source.offsets
    reader = _iter_parquet if source.kind == "parquet" else iter_npy
    for s in range(len(source.files)) if files is None else files:
        shard = source.files[s]
        done = 0  # vectors of this shard read so far: the global rows skip rows with a null vector
        for rows, raw, table in reader(source, shard, batch_size, items):
            if raw.ndim != 2 or raw.shape[1] != source.dim:
                raise LatentError(
                    f"mixed dimensions: {posixpath.basename(shard.path)} has {raw.shape[-1]}-d vectors, "
                    f"expected {source.dim}"
                )
            vectors = np.ascontiguousarray(raw, dtype=np.float32)
            if metric != "none":
                check_vectors(vectors, posixpath.basename(shard.path), metric, rows)
            item_rows = make_items(source, shard, rows, table) if items else None
            yield Batch(vectors, item_rows, s, int(offsets[s]) + done, rows)
            done += len(vectors)


def read_rows(source: EmbeddingSource, rows: Sequence[np.ndarray], batch_size: int, metric: str) -> list[np.ndarray]:
    """The vectors of each set of global ``rows`` (each sorted, unique), in one pass over the shards
    that hold any of them; each vector lands directly in its set's array (nothing is held twice)."""
    rows = [np.asarray(r, dtype=np.int64) for r in rows]
    out = [np.empty((len(r), source.dim), dtype=np.float32) for r in rows]
    offsets = source.offsets
    wanted = [
        s for s in range(len(source.files)) if any(np.any((r >= offsets[s]) & (r < offsets[s + 1])) for r in rows)
    ]
    for batch in iter_batches(source, batch_size, metric=metric, files=wanted, items=False):
        for r, o in zip(rows, out):
            lo, hi = np.searchsorted(r, [batch.first, batch.first + len(batch.vectors)])
            o[lo:hi] = batch.vectors[r[lo:hi] - batch.first]
    return out
