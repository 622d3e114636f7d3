"""Sharded indexes: N FAISS indexes sharing one trained quantizer, each over a contiguous range of labels.

The trained, empty index is copied into every shard; shard ``s`` holds labels ``first_s ..
first_s + ntotal_s - 1`` (FAISS labels inside a shard count from 0, the merge adds ``first_s``). Since
every shard has the same coarse quantizer and codebooks, a shard probes the same lists and computes the
same distances as the unsharded index, so merging the shards' top-k (``merge_results``, the rule of
FAISS's ``IndexShards``) gives the unsharded index's answer: scores identical, ids identical except
where several hits tie exactly on the k-th score (FAISS breaks such ties by scan position). Sharding
is offered for IVF indexes without a re-rank stage and for Flat (exact): graph indexes (HNSW) build a
different graph per shard and re-ranked indexes re-rank a different candidate set, so neither merges
to the unsharded answer (docs/index-directory.md).

This module reads, searches and appends to shard files; they are built by Ray tasks, one per shard
(pipeline/index/builder/sharded.py, ``add_shards``), each writing its shard file straight into the
staging directory (shared storage on a cluster).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from pipeline.index.store import ondisk
from pipeline.index.store.format import FORMAT_VERSION
from pipeline.index.store.integrity import read_faiss_index

SHARD_FILE = "shard-{:05d}.faiss"


@dataclass
class ShardEntry:
    """One shard of index.json's ``shards`` list."""

    file: str  # the shard's FAISS file in the index directory
    first: int  # its first label
    ntotal: int  # its rows: labels first .. first + ntotal - 1


def write_shard(index: faiss.Index, directory: Path, name: str, storage: str) -> int:
    """Write a filled shard (on-disk storage: its lists go to ``<name>.ivfdata`` beside it); its bytes."""
    path = directory / name
    if storage == ondisk.ONDISK:
        return ondisk.write_ondisk(index, path)
    faiss.write_index(index, str(path))
    return os.path.getsize(path)


# --- reading and searching ------------------------------------------------------------------------------


def read_shard(directory: Path, entry: ShardEntry, dim: int, mmap: bool = True) -> faiss.Index:
    """A shard file, memory-mapped (or read into memory); on-disk lists are found beside it. A file FAISS
    cannot parse, or that does not hold the shard's rows, is an IndexCorrupted naming it."""
    path = directory / entry.file
    return read_faiss_index(path, dim, entry.ntotal, ondisk.read_flags(path, mmap))


def open_shards(directory: Path, entries: Sequence[ShardEntry], dim: int, mmap: bool = True) -> faiss.IndexShards:
    """The shards as one FAISS index (``IndexShards`` with successive ids: labels are global)."""
    joined = faiss.IndexShards(dim, False, True)  # not threaded: each shard's search already uses every core
    for entry in entries:
        joined.add_shard(read_shard(directory, entry, dim, mmap))  # FAISS's wrapper keeps the part alive
    return joined


def is_sharded(index: Any) -> bool:
    return isinstance(index, faiss.IndexShards)


def shard_parts(index: faiss.IndexShards) -> list[faiss.Index]:
    return [index.at(i) for i in range(index.count())]


def reconstruct(index: faiss.IndexShards, label: int) -> np.ndarray:
    """The stored vector of a global ``label`` from the shard that holds it (IVF: via a direct map)."""
    first = 0
    for part in shard_parts(index):
        if label < first + part.ntotal:
            return reconstruct_local(part, int(label - first))
        first += part.ntotal
    raise IndexError(f"label {label} is past the index's {first} rows")


def reconstruct_local(part: faiss.Index, label: int) -> np.ndarray:
    """The stored vector of a shard's own ``label`` (IVF: via a direct map, built on first use)."""
    try:
        return part.reconstruct(int(label))
    except RuntimeError:
        faiss.extract_index_ivf(part).make_direct_map()
        return part.reconstruct(int(label))


def merge_results(
    distances: Sequence[np.ndarray], labels: Sequence[np.ndarray], firsts: Sequence[int], k: int, keep_max: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge the shards' (n, k) results (shard-local labels, shards in label order) into the global top-k,
    as FAISS's IndexShards does: best score first; equal scores by shard (the last shard first for inner
    product, the first for L2, FAISS's heap order), then by rank within the shard."""
    count = len(distances)
    n = distances[0].shape[0]
    scores = np.concatenate([np.asarray(d, dtype=np.float32)[:, :k] for d in distances], axis=1)
    found = np.concatenate(
        [np.where(lab[:, :k] >= 0, lab[:, :k] + first, -1) for lab, first in zip(labels, firsts)], axis=1
    )
    width = scores.shape[1] // count
    shard = np.repeat(np.arange(count), width)
    rank = (count - 1 - shard) if keep_max else shard
    key = np.where(found < 0, np.inf, -scores if keep_max else scores)
    position = np.arange(scores.shape[1])
    order = np.empty((n, min(k, scores.shape[1])), dtype=np.int64)
    for q in range(n):
        order[q] = np.lexsort((position, rank, key[q]))[:k]
    out_d, out_i = np.take_along_axis(scores, order, 1), np.take_along_axis(found, order, 1)
    if out_d.shape[1] < k:  # fewer candidates than k: pad as FAISS does
        pad = k - out_d.shape[1]
        out_d = np.pad(out_d, ((0, 0), (0, pad)), constant_values=-np.inf if keep_max else np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_d, out_i


# --- appending ------------------------------------------------------------------------------------------


class ShardAppender:
    """``index.mode=append`` on a sharded index: new rows go to the last shard until it holds
    ``capacity`` rows, then to new shards (copies of the trained quantizer), so labels stay contiguous."""

    def __init__(self, directory: Path, entries: Sequence[ShardEntry], dim: int, capacity: int) -> None:
        self.directory = directory
        self.entries = list(entries)
        self.capacity = max(1, capacity)
        self.parts = [read_shard(directory, e, dim, mmap=True) for e in self.entries[:-1]]
        # the one FAISS adds to: read into memory (on-disk lists copied in: the old directory stays untouched)
        self.parts.append(ondisk.to_memory(read_shard(directory, self.entries[-1], dim, mmap=False)))
        self.changed = {len(self.parts) - 1}
        self.dim = dim
        empty = faiss.clone_index(self.parts[-1])
        empty.reset()  # keeps the trained quantizer and codebooks
        self.empty = faiss.serialize_index(empty)

    @property
    def ntotal(self) -> int:
        return sum(p.ntotal for p in self.parts)

    def add(self, vectors: np.ndarray) -> None:
        start = 0
        while start < len(vectors):
            last = self.parts[-1]
            room = self.capacity - last.ntotal
            if room <= 0:
                self.parts.append(faiss.deserialize_index(self.empty))
                self.changed.add(len(self.parts) - 1)
                continue
            take = vectors[start : start + room]
            last.add(np.ascontiguousarray(take))
            start += len(take)

    def joined(self) -> faiss.IndexShards:
        joined = faiss.IndexShards(self.dim, False, True)
        for part in self.parts:
            joined.add_shard(part)
        return joined

    def write(self, stage: Path, storage: str) -> tuple[list[ShardEntry], int]:
        """Write the changed shards into ``stage``, link (or copy) the others from the old directory."""
        entries, first, total = [], 0, 0
        for s, part in enumerate(self.parts):
            name = SHARD_FILE.format(s)
            if s in self.changed:
                total += write_shard(part, stage, name, storage)
            else:
                for file in ondisk.shard_files(self.directory / name):
                    _link_or_copy(file, stage / file.name)
                    total += file.stat().st_size
            entries.append(ShardEntry(name, first, int(part.ntotal)))
            first += part.ntotal
        return entries, total


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)  # the old directory's file is never written again: sharing it is safe
    except OSError:
        shutil.copy2(source, target)


def appender_for(directory: Any) -> ShardAppender | None:
    """A ShardAppender for an opened sharded IndexDirectory (None for a one-file index)."""
    info = directory.info
    if not info.shards:
        return None
    entries = [ShardEntry(**entry) for entry in info.shards]
    capacity = info.shard_capacity or max(e.ntotal for e in entries)
    return ShardAppender(directory.path, entries, info.dim, capacity)


def record_layout(info: Any, entries: Sequence[ShardEntry], storage: str, capacity: int) -> None:
    """Record the shards in ``info`` (index.json, format 2)."""
    info.shards = [asdict(e) for e in entries]
    info.storage = storage
    info.shard_capacity = int(capacity)
    info.format_version = FORMAT_VERSION


def files_bytes(directory: Path, info: Any) -> int:
    """Bytes of a sharded index's shard files (with their on-disk lists)."""
    return sum(f.stat().st_size for e in info.shards for f in ondisk.shard_files(directory / e["file"]))
