"""The embedding dataset: Parquet shards, their schema metadata, atomic commits (docs/embedding-dataset.md)."""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from pipeline.errors import LatentError, check_format_version

FORMAT_VERSION = 2  # 2: an embedding column listed in `optional` is null in rows without that input
METADATA_KEY = b"latent.embedding"  # Parquet key-value metadata holding EmbeddingInfo as JSON
SHARD_PREFIX = "part-"
ERRORS_DIR = "_errors"
STATE_DIR = "_latent"
TMP_DIR = ".tmp"
SUCCESS_MARKER = "_SUCCESS"
EMBEDDING_SUFFIX = "_embedding"
RESERVED_COLUMNS = ("id", "source", "text", "image_embedding", "text_embedding")
ERRORS_SCHEMA = pa.schema([("id", pa.string()), ("source", pa.string()), ("error", pa.string())])

_ARROW_DTYPES = {"float16": pa.float16(), "float32": pa.float32()}


@dataclass
class EmbeddingInfo:
    """What a shard's vectors are: recorded in every shard and in _latent/embedding.json."""

    model: dict[str, Any]  # pipeline.encode.model fingerprint: name, weights hash, dim, preprocessing
    dim: int
    dtype: str  # float16 | float32
    modality: str  # image | text | both
    normalized: bool = True
    columns: dict[str, str] = field(default_factory=dict)  # modality -> embedding column
    format_version: int = 1
    optional: list[str] = field(default_factory=list)  # kinds whose column is null where a row lacks that input

    @classmethod
    def create(
        cls, model: dict[str, Any], dtype: str, modality: str, optional: list[str] | None = None
    ) -> EmbeddingInfo:
        kinds = ["image", "text"] if modality == "both" else [modality]
        columns = {kind: f"{kind}{EMBEDDING_SUFFIX}" for kind in kinds}
        optional = sorted(optional or [])
        return cls(
            model=model,
            dim=int(model["dim"]),
            dtype=dtype,
            modality=modality,
            columns=columns,
            format_version=2 if optional else 1,  # version 1 readers stay able to read what they can
            optional=optional,
        )

    def to_json(self) -> str:
        data = dict(self.__dict__)
        if not data["optional"]:
            del data["optional"]  # format version 1, exactly as before
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> EmbeddingInfo:
        data = json.loads(text)
        check_format_version(data, FORMAT_VERSION, "embedding dataset")
        return cls(**data)

    def compatible_with(self, other: EmbeddingInfo) -> list[str]:
        """Reasons two infos cannot share one dataset (empty when they can)."""
        problems = []
        for key in ("dim", "dtype", "modality", "optional"):
            if getattr(self, key) != getattr(other, key):
                problems.append(f"{key}: {getattr(self, key)} != {getattr(other, key)}")
        for key in ("name", "pretrained", "checkpoint_sha256", "preprocess"):
            if self.model.get(key) != other.model.get(key):
                problems.append(f"model.{key}: {self.model.get(key)} != {other.model.get(key)}")
        return problems

    def shard_schema(self, metadata_fields: Iterable[pa.Field] = ()) -> pa.Schema:
        vector = pa.list_(_ARROW_DTYPES[self.dtype], self.dim)
        fields = [
            pa.field("id", pa.string(), nullable=False),
            pa.field("source", pa.string()),
            pa.field("text", pa.string()),
            *metadata_fields,
            *(pa.field(col, vector) for col in self.columns.values()),
        ]
        return pa.schema(fields, metadata={METADATA_KEY: self.to_json().encode()})


def vectors_to_arrow(vectors: np.ndarray, dtype: str, valid: np.ndarray | None = None) -> pa.FixedSizeListArray:
    """An NxD array as a fixed_size_list<dtype>[D] array (rows where ``valid`` is False are null)."""
    flat = pa.array(np.ascontiguousarray(vectors, dtype=np.dtype(dtype)).reshape(-1), type=_ARROW_DTYPES[dtype])
    mask = None if valid is None else pa.array(~np.asarray(valid, dtype=bool))
    return pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1], mask=mask)


def arrow_to_vectors(column: pa.ChunkedArray | pa.Array, dtype: np.dtype = np.float32) -> np.ndarray:
    """A (fixed-size or variable) list column of equal-length vectors as an NxD array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(array) == 0:
        return np.zeros((0, getattr(array.type, "list_size", 0)), dtype=dtype)
    if array.null_count:
        raise LatentError(  # the index and map readers leave such rows out before they get here
            f"{array.null_count} rows have a null embedding where every row needs a vector (in a dataset embedded "
            f"with modality=auto, rows without a caption have no text_embedding)"
        )
    lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
    if lengths.min() != lengths.max():
        raise LatentError(f"embeddings have mixed dimensions ({lengths.min()}..{lengths.max()})")
    values = pc.list_flatten(array).to_numpy(zero_copy_only=False)
    return values.reshape(len(array), int(lengths[0])).astype(dtype, copy=False)


def filesystem(path: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, root = fsspec.core.url_to_fs(path)
    return fs, root.rstrip("/") or "/"


def commit_table(table: pa.Table, directory: str, prefix: str = SHARD_PREFIX) -> str:
    """Write ``table`` to ``directory`` under a fresh name, atomically: a reader sees all of it or none.

    The file is written under .tmp/ and renamed into place, so a crash leaves only .tmp/ litter
    (removed at the next start), never a partial shard.
    """
    fs, root = filesystem(directory)
    name = f"{prefix}{uuid.uuid4().hex}.parquet"
    tmp = posixpath.join(root, TMP_DIR, name)
    fs.makedirs(posixpath.dirname(tmp), exist_ok=True)
    with fs.open(tmp, "wb") as f:
        pq.write_table(table, f, compression="zstd")
    final = posixpath.join(root, name)
    fs.mv(tmp, final)
    return final


def read_info(path: str) -> EmbeddingInfo | None:
    """The EmbeddingInfo of a shard or of a dataset directory (None if it has none)."""
    fs, root = filesystem(path)
    if fs.isdir(root):
        recorded = posixpath.join(root, STATE_DIR, "embedding.json")
        if fs.exists(recorded):
            return EmbeddingInfo.from_json(fs.cat_file(recorded))
        shards = list_shards(path)
        if not shards:
            return None
        root = shards[0]
    with fs.open(root, "rb") as f:
        meta = pq.read_schema(f).metadata or {}
    return EmbeddingInfo.from_json(meta[METADATA_KEY]) if METADATA_KEY in meta else None


def list_shards(path: str) -> list[str]:
    """Committed Parquet shards of a dataset directory, sorted (hidden and _-prefixed entries skipped)."""
    fs, root = filesystem(path)
    if not fs.exists(root):
        return []
    found = [p for p in fs.find(root) if p.endswith(".parquet")]
    visible = [
        p for p in found if not any(part.startswith(("_", ".")) for part in posixpath.relpath(p, root).split("/"))
    ]
    return sorted(visible)


def read_ids(paths: list[str], column: str = "id") -> pa.ChunkedArray:
    """The ``id`` column of many Parquet files (only that column is read)."""
    if not paths:
        return pa.chunked_array([], type=pa.string())
    fs, _ = filesystem(paths[0])
    dataset = pads.dataset([filesystem(p)[1] for p in paths], format="parquet", filesystem=fs)
    return dataset.to_table(columns=[column]).column(column).cast(pa.string())
