"""The .npy inputs of the index: a folder of ``.npy`` files (with ``<stem>.parquet`` metadata beside them) and
clip-retrieval's output (``img_emb/``, ``text_emb/``, ``metadata/``). Scanned from the files' headers;
read in batches straight from the file, with the aligned metadata rows.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LatentError
from pipeline.index.input.embeddings import (
    EmbeddingSource,
    InputFile,
    file_url,
    item_schema_of,
    pick_embedding_column,
    unify_schemas,
)
from pipeline.io.shards import filesystem

_NPY_DTYPES = {np.dtype("float16"), np.dtype("float32"), np.dtype("float64")}
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def npy_header(fs: fsspec.AbstractFileSystem, path: str) -> tuple[tuple[int, ...], np.dtype, int]:
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


def scan_clip_retrieval(fs: fsspec.AbstractFileSystem, root: str, found: list[str], column: str | None):
    chosen = pick_embedding_column(found, column, root, found)
    folder = posixpath.join(root, chosen)
    npys = sorted(p for p in fs.ls(folder, detail=False) if p.endswith(".npy"))
    return scan_npy(fs, folder, npys, chosen, None, posixpath.join(root, "metadata"))


def scan_npy(
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
        (rows, d), _, _ = npy_header(fs, path)
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
        metadata = metadata and file_url(fs, metadata)
        shards.append(InputFile(path=file_url(fs, path), rows=rows, name=stem, metadata=metadata))
    source = EmbeddingSource(root, "npy", name, dim, shards, None, item_schema_of(unify_schemas(schemas, root)))
    if source.rows == 0:
        raise LatentError(f"input.path={root}: empty dataset (0 vectors in {len(shards)} .npy files)")
    return source


class Rechunker:
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


def iter_npy(source: EmbeddingSource, shard: InputFile, batch_size: int, items: bool):
    fs, _ = filesystem(shard.path)
    (rows, dim), dtype, offset = npy_header(fs, shard.path)
    meta_file = fs.open(shard.metadata, "rb") if items and shard.metadata else None
    try:
        metadata = Rechunker(pq.ParquetFile(meta_file).iter_batches(batch_size=batch_size)) if meta_file else None
        with fs.open(shard.path, "rb") as f:
            f.seek(offset)
            for start in range(0, rows, batch_size):
                n = min(batch_size, rows - start)
                data = f.read(n * dim * dtype.itemsize)
                if len(data) != n * dim * dtype.itemsize:
                    raise LatentError(f"{posixpath.basename(shard.path)} is truncated (expected {rows} rows)")
                vectors = np.frombuffer(data, dtype=dtype).reshape(n, dim)
                yield np.arange(start, start + n), vectors, (metadata.take(n) if metadata else None)
    finally:
        if meta_file is not None:
            meta_file.close()
