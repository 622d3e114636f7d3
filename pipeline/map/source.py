"""What a map is made of: the rows of an embedding dataset (input.path) or of an index (index.path), in
units (a dataset's shards; an index's label ranges) that placement tasks read on their own.

A ``MapSource`` is cheap to pickle (paths only): Ray tasks reopen what they read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from pipeline.errors import LatentError
from pipeline.index.input.read import iter_batches, scan
from pipeline.io.shards import EmbeddingInfo
from pipeline.io.vectors import usable

INDEX_UNIT_ROWS = 65536  # rows per placement unit of an index
READ_BATCH = 16384


@dataclass(frozen=True)
class Unit:
    """Global rows ``start .. start + rows`` of the source; ``name`` names its output file."""

    name: str
    start: int
    rows: int
    shard: int = -1  # the dataset shard (-1 for an index)


@dataclass
class MapSource:
    kind: str  # "dataset" | "index"
    path: str
    dim: int
    rows: int
    metric: str  # "ip" (unit vectors: cosine) | "l2"
    embedding: EmbeddingInfo | None
    units: list[Unit]
    column: str | None = None
    identity: dict[str, Any] = field(default_factory=dict)  # what says the source changed (fingerprint)
    scanned: Any = None  # a dataset's EmbeddingSource (paths only)

    @property
    def model(self) -> dict[str, Any] | None:
        return self.embedding.model if self.embedding is not None else None

    def fingerprint(self) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(self.identity, sort_keys=True).encode()).hexdigest()[:16]
        return {"kind": self.kind, "path": self.path, "rows": self.rows, "dim": self.dim, "sha256": digest}

    def read(self, unit: Unit, items: bool = True) -> Iterator[tuple[int, np.ndarray, pa.Table | None]]:
        """(first global row, float32 vectors, items with id and text or None) batch by batch over ``unit``."""
        if self.kind == "dataset":
            source = self.scanned or scan(self.path, self.column)
            for batch in iter_batches(source, READ_BATCH, metric="none", files=[unit.shard], items=items):
                table = batch.items.select(["id", "text"]) if items else None
                yield batch.first, batch.vectors, table
            return
        from pipeline.index.store.directory import IndexDirectory

        directory = IndexDirectory.open(self.path)
        index = _reconstructable(directory)
        for start in range(unit.start, unit.start + unit.rows, READ_BATCH):
            n = min(READ_BATCH, unit.start + unit.rows - start)
            vectors = index.reconstruct_n(start, n).astype(np.float32)
            table = directory.items(np.arange(start, start + n), columns=["id", "text"]) if items else None
            yield start, vectors, table

    def take(self, rows: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        """Vectors and texts of the global ``rows`` (sorted, unique), in one pass over the units holding them
        (unusable vectors too: ``pipeline.io.vectors.usable`` tells them)."""
        rows = np.asarray(rows, dtype=np.int64)
        vectors = np.empty((len(rows), self.dim), dtype=np.float32)
        texts: list[str | None] = [None] * len(rows)
        for unit in self.units:
            lo, hi = np.searchsorted(rows, [unit.start, unit.start + unit.rows])
            if lo == hi:
                continue
            for first, batch, table in self.read(unit):
                a, b = np.searchsorted(rows, [first, first + len(batch)])
                if a == b:
                    continue
                local = rows[a:b] - first
                vectors[a:b] = batch[local]
                texts[a:b] = table.column("text").take(pa.array(local)).to_pylist()
        return vectors, texts


class _ShardVectors:
    """``reconstruct_n`` over a sharded index's parts (FAISS's IndexShards cannot reconstruct)."""

    def __init__(self, parts: list) -> None:
        self.parts = parts
        self.firsts = np.concatenate([[0], np.cumsum([p.ntotal for p in parts])])

    def reconstruct_n(self, start: int, n: int) -> np.ndarray:
        out = []
        for part, first in zip(self.parts, self.firsts[:-1]):
            lo, hi = max(start, first), min(start + n, first + part.ntotal)
            if lo < hi:
                out.append(part.reconstruct_n(int(lo - first), int(hi - lo)))
        return np.concatenate(out)


def _reconstructable(directory):
    import faiss

    from pipeline.index.store import shards

    index = directory.index
    if shards.is_sharded(index):
        parts = shards.shard_parts(index)
        try:
            for part in parts:
                shards.reconstruct_local(part, 0)  # IVF: builds the direct map
            return _ShardVectors(parts)
        except (RuntimeError, AttributeError) as err:
            raise _cannot(directory) from err
    try:
        index.reconstruct(0)
        return index
    except RuntimeError:
        pass
    try:
        faiss.extract_index_ivf(index).make_direct_map()
        index.reconstruct(0)
        return index
    except (RuntimeError, AttributeError) as err:
        raise _cannot(directory) from err


def _cannot(directory) -> LatentError:
    return LatentError(
        f"index.path={directory.path}: FAISS cannot give back the vectors of this index ({directory.info.factory}): "
        f"map the embedding dataset it was built from instead, `latent map input.path=EMBEDDINGS output.path=MAP`"
    )


def _metric_of(embedding: EmbeddingInfo | None, first: np.ndarray) -> str:
    if embedding is not None:
        return "ip" if embedding.normalized else "l2"
    norms = np.linalg.norm(first[usable(first, "ip")], axis=1)  # NaN and zero rows aside
    return "ip" if len(norms) and np.all(np.abs(norms - 1) < 1e-2) else "l2"


def open_dataset(path: str, column: str | None = None, metric: str = "auto") -> MapSource:
    source = scan(path, column)  # empty datasets, mixed dims, mixed models: LatentError here
    units = []
    offsets = source.offsets
    for s, shard in enumerate(source.files):
        if shard.rows:
            units.append(Unit(name=shard.name.replace("/", "__"), start=int(offsets[s]), rows=shard.rows, shard=s))
    if metric == "auto":
        first = next(iter_batches(source, 256, metric="none", files=[units[0].shard], items=False)).vectors
        metric = _metric_of(source.embedding, first)
    identity = {"shards": [[s.name, s.rows] for s in source.files], "column": source.column}
    return MapSource(
        "dataset", path, source.dim, source.rows, metric, source.embedding, units, column, identity, source
    )


def open_index(path: str, metric: str = "auto", start: int = 0) -> MapSource:
    from pipeline.index.store.directory import IndexDirectory, is_index_directory

    if not is_index_directory(path):
        raise LatentError(f"index.path={path}: not an index directory (no index.json)")
    directory = IndexDirectory.open(path)
    info = directory.info
    if info.ntotal == 0:
        raise LatentError(f"index.path={path}: the index is empty (0 items)")
    units = index_units(info.ntotal, start)
    identity = {"ntotal": info.ntotal, "created_at": info.created_at, "updated_at": info.updated_at}
    chosen = info.metric if metric == "auto" else metric
    return MapSource("index", path, info.dim, info.ntotal, chosen, info.embedding, units, None, identity)


def index_units(ntotal: int, start: int = 0) -> list[Unit]:
    return [
        Unit(name=f"rows-{s:012d}", start=s, rows=min(INDEX_UNIT_ROWS, ntotal - s))
        for s in range(start, ntotal, INDEX_UNIT_ROWS)
    ]
