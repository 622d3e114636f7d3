"""The index directory: FAISS index, row -> item map, metadata and index.json (docs/index-directory.md).

Writers stage every file in a hidden sibling directory and move it into place in one rename (or one
atomic exchange when replacing), so a reader sees the old index or the new one, never a mix.
Readers memory-map the big files: opening an index does not load the corpus' metadata into memory.
"""

from __future__ import annotations

import bisect
import os
import shutil
import threading
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import LatentError
from pipeline.index.nodes import apply_search_params
from pipeline.index.store.format import (
    IDS_BATCH_ROWS,
    IDS_FILE,
    INDEX_FILE,
    INFO_FILE,
    ITEMS_BATCH_ROWS,
    ITEMS_FILE,
    IndexInfo,
)
from pipeline.index.store.integrity import (
    LOSSY_SCORE_TOLERANCE,
    SCORE_TOLERANCE,
    IndexCorrupted,
    check_files,
    file_checksums,
    lossy_scores,
    open_arrow,
    read_faiss_index,
)
from pipeline.index.store.shards import ShardEntry, open_shards
from pipeline.io.publish import pid_alive, publish_directory

_STAGING_MARK = ".tmp-"


# --- reading ------------------------------------------------------------------------------------


class IndexDirectory:
    """A committed index directory, opened read-only. Safe to share between threads."""

    def __init__(
        self, path: str | os.PathLike, info: IndexInfo, mmap: bool = True, index: Any = None, verify: str = "quick"
    ) -> None:
        if verify not in ("quick", "full"):
            raise LatentError(f"verify={verify!r}: quick (sizes, files up to 16 MiB hashed) or full (every file)")
        self.path = Path(path)
        self.info = info
        self.mmap = mmap
        self._lock = threading.Lock()
        # read now, not on first use: a later replacement of the directory must not change what we serve
        check_files(self.path, info.files, info.data_files(), full=verify == "full")  # quick: sizes, small files
        if index is not None:  # searched elsewhere (Ray Serve shard deployments): anything with search/ntotal
            self._index = index
        else:
            if info.shards:
                entries = [ShardEntry(**entry) for entry in info.shards]
                self._index = open_shards(self.path, entries, info.dim, mmap)
            else:
                flags = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0  # maps flat codes, IVF lists
                self._index = read_faiss_index(self.path / INDEX_FILE, info.dim, info.ntotal, flags)
            apply_search_params(self._index, info.search_params)
        self._items = open_arrow(self.path / ITEMS_FILE)
        self._ids = open_arrow(self.path / IDS_FILE)
        rows = sum(self._items.get_batch(i).num_rows for i in range(self._items.num_record_batches))
        if rows != info.ntotal:
            raise IndexCorrupted(f"{self.path / ITEMS_FILE}: {rows} rows, index.json says {info.ntotal}")
        # the first id of each sorted batch: label_of bisects these, then one batch
        self._id_fences = [self._ids.get_batch(i).column(0)[0].as_py() for i in range(self._ids.num_record_batches)]
        self._score_bound = 1.0 + (LOSSY_SCORE_TOLERANCE if lossy_scores(info.factory) else SCORE_TOLERANCE)

    @classmethod
    def open(
        cls, path: str | os.PathLike, mmap: bool = True, index: Any = None, verify: str = "quick"
    ) -> IndexDirectory:
        """Open the index directory at ``path``; ``mmap``: map the FAISS index instead of reading it;
        ``index``: search this instead of reading the FAISS index (a remote one); ``verify``: "quick" checks
        every file's size and hashes files up to 16 MiB, "full" hashes every file (docs/index-directory.md)."""
        root = Path(path)
        info_path = root / INFO_FILE
        if not info_path.is_file():
            raise LatentError(f"{root} is not an index directory (no {INFO_FILE})")
        return cls(root, IndexInfo.from_json(info_path.read_bytes()), mmap=mmap, index=index, verify=verify)

    @property
    def index(self) -> faiss.Index:
        """The FAISS index with its tuned search parameters applied (memory-mapped where FAISS can)."""
        return self._index

    @property
    def item_schema(self) -> pa.Schema:
        """Columns of ``items``: id, source, text and the columns passed through from the input."""
        return self._items.schema

    def __len__(self) -> int:
        return self.info.ntotal

    def check_scores(self, scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """``scores`` of a search, checked: on a normalised ip index a cosine far outside [-1, 1] means the
        index's data is corrupted (refused, naming the file); rounding just past +-1 is clipped."""
        if self.info.metric != "ip" or not self.info.normalized:
            return scores
        hit = labels >= 0
        bad = hit & ~(np.abs(scores) <= self._score_bound)  # NaN counts as bad
        if bad.any():
            row, col = (int(v[0]) for v in np.nonzero(bad))
            label = int(labels[row, col])
            raise IndexCorrupted(
                f"{self.file_of(label)}: a search returned cosine {float(scores[row, col]):.6g} for label "
                f"{label} on a normalised index (cosines lie in [-1, 1]): the index data is corrupted; "
                f"check it with `latent verify index.path={self.path}` and rebuild it with index.mode=overwrite"
            )
        return np.clip(scores, -1.0, 1.0, out=scores)

    def file_of(self, label: int) -> Path:
        """The FAISS file that stores ``label``'s vector (its shard's, in a sharded directory)."""
        for entry in self.info.shards or []:
            if entry["first"] <= label < entry["first"] + entry["ntotal"]:
                return self.path / entry["file"]
        return self.path / INDEX_FILE

    def check_stored(self, label: int, vector: np.ndarray) -> np.ndarray:
        """A stored vector read back (an id query, a route's end): on a normalised index whose codes keep
        the norm, one far from unit length was damaged on disk; refused, naming the file, not the query."""
        if self.info.normalized and not lossy_scores(self.info.factory):
            norm = float(np.linalg.norm(vector))
            if not abs(norm - 1.0) <= self._score_bound - 1.0:
                raise IndexCorrupted(
                    f"{self.file_of(label)}: the stored vector of label {label} has norm {norm:.6g} on a normalised "
                    f"index: the index data is damaged; check it with `latent verify index.path={self.path}` and "
                    f"rebuild it with index.mode=overwrite"
                )
        return vector

    def items(self, labels: Sequence[int] | np.ndarray, columns: Sequence[str] | None = None) -> pa.Table:
        """Metadata rows of FAISS ``labels`` (flattened), in their order; a label of -1 gives a null row."""
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size and (labels.max() >= self.info.ntotal or labels.min() < -1):
            raise IndexError(f"labels must be in [-1, {self.info.ntotal}); got {labels.min()}..{labels.max()}")
        names = list(columns) if columns is not None else self.item_schema.names
        rows = self.info.items_batch_rows
        valid = labels >= 0
        where = np.flatnonzero(valid)
        order = np.argsort(labels[where], kind="stable")  # visit each record batch once, in file order
        wanted = labels[where][order]
        bounds = np.flatnonzero(np.diff(wanted // rows)) + 1
        parts = []
        with self._lock:
            for group in np.split(wanted, bounds) if wanted.size else []:
                batch = self._items.get_batch(int(group[0] // rows)).select(names)
                parts.append(pa.Table.from_batches([batch.take(pa.array(group % rows))]))
        table = pa.concat_tables(parts) if parts else self.item_schema.empty_table().select(names)
        # row j of ``table`` belongs to position where[order[j]] of the answer
        position = np.zeros(len(labels), dtype=np.int64)
        position[where[order]] = np.arange(len(order))
        return table.take(pa.array(position, mask=~valid))

    def ids(self, labels: Sequence[int] | np.ndarray) -> np.ndarray:
        """The ids of FAISS ``labels``: an object array of str of the same shape (None where a label is -1),
        so ``d.ids(I)`` maps a whole ``search`` result."""
        column = self.items(labels, columns=["id"]).column("id")
        out = np.empty(len(column), dtype=object)
        out[:] = column.to_pylist()
        return out.reshape(np.shape(labels))

    def label_of(self, id: str) -> int | None:
        """The FAISS label of the item ``id``, or None if the index does not hold it."""
        label = int(self.labels_of([id])[0])
        return None if label < 0 else label

    def labels_of(self, ids: Iterable[str] | pa.Array | pa.ChunkedArray) -> np.ndarray:
        """FAISS labels of ``ids`` (-1 for an id the index does not hold): the one id -> label lookup of an
        index directory. ids.arrow is sorted by id: each id's record batch is found by bisecting the batches'
        first ids, then the ids that fall in a batch are matched against it at once (memory-mapped, so only
        the batches touched are read)."""
        if isinstance(ids, (pa.Array, pa.ChunkedArray)):
            keys = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
            keys = keys.cast(pa.string())
        else:
            keys = pa.array(list(ids), pa.string())
        labels = np.full(len(keys), -1, dtype=np.int64)
        fences = self._id_fences
        batch_of = np.array(
            [-1 if id is None else bisect.bisect_right(fences, id) - 1 for id in keys.to_pylist()], dtype=np.int64
        )
        order = np.argsort(batch_of, kind="stable")
        starts = np.flatnonzero(np.diff(batch_of[order], prepend=-2))
        for at in np.split(order, starts[1:]):
            b = int(batch_of[at[0]]) if len(at) else -1
            if b < 0:  # before the first id (or a null id): not held
                continue
            with self._lock:
                batch = self._ids.get_batch(b)
            position = pc.index_in(keys.take(pa.array(at)), value_set=batch.column(0))
            found = pc.is_valid(position).to_numpy(zero_copy_only=False)
            labels[at[found]] = batch.column(1).to_numpy()[pc.drop_null(position).to_numpy()]
        return labels

    def all_ids(self) -> pa.ChunkedArray:
        """Every id in the index, sorted (memory-mapped: cheap until iterated)."""
        return self.id_map().column("id")

    def id_map(self) -> pa.Table:
        """The whole id map: ``id`` (sorted) and ``label`` columns, memory-mapped."""
        with self._lock:
            return pa.Table.from_batches([self._ids.get_batch(i) for i in range(self._ids.num_record_batches)])

    def item_batches(self) -> Iterator[pa.RecordBatch]:
        """items.arrow's record batches in label order (for copying an index's metadata)."""
        for i in range(self._items.num_record_batches):
            with self._lock:
                batch = self._items.get_batch(i)
            yield batch


# --- writing ------------------------------------------------------------------------------------


class ItemsWriter:
    """Streams metadata rows into items.arrow as record batches of exactly ``batch_rows`` rows (the last one
    may be shorter), so that a label's row is found in O(1) by ``IndexDirectory.items``."""

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, batch_rows: int = ITEMS_BATCH_ROWS) -> None:
        self.schema = schema
        self.batch_rows = batch_rows
        self.rows = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema)

    def write(self, table: pa.Table) -> None:
        self._pending.append(table.select(self.schema.names).cast(self.schema))
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self.batch_rows:
            self._flush(final=False)

    def _flush(self, final: bool) -> None:
        buffered = pa.concat_tables(self._pending)
        full = (buffered.num_rows // self.batch_rows) * self.batch_rows
        end = buffered.num_rows if final else full
        for start in range(0, end, self.batch_rows):
            chunk = buffered.slice(start, min(self.batch_rows, end - start)).combine_chunks()
            self._writer.write_batch(chunk.to_batches()[0] if chunk.num_rows else pa.record_batch([], self.schema))
        rest = buffered.slice(end)
        self._pending, self._pending_rows = ([rest], rest.num_rows) if rest.num_rows else ([], 0)

    def close(self) -> int:
        if self._pending_rows:
            self._flush(final=True)
        self._writer.close()
        self._sink.close()
        return self.rows


def write_id_map(path: str | os.PathLike, ids: pa.ChunkedArray | pa.Array) -> None:
    """ids.arrow: (id, label) sorted by id, for binary search. Duplicate ids are an error."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    order = pc.sort_indices(ids)
    keys = ids.take(order)
    if len(keys) > 1:
        same = pc.equal(keys.slice(1), keys.slice(0, len(keys) - 1))
        if pc.any(same).as_py():
            dup = keys[pc.index(same, True).as_py()].as_py()
            raise LatentError(f"duplicate id '{dup}' in the input: ids must be unique (set unique ids, or dedupe)")
    table = pa.table({"id": keys, "label": order.cast(pa.int64())})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=IDS_BATCH_ROWS):
            writer.write_batch(batch)


class StagedIndexDirectory:
    """A new index directory being written next to ``path``; ``commit()`` moves it into place.

    Leaving the ``with`` block without committing (an error) removes the staging directory: nothing is
    written and an index already at ``path`` is untouched.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.target = Path(path).absolute()
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._remove_stale()
        prefix = f".{self.target.name}{_STAGING_MARK}"
        self.dir = self.target.parent / f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.dir.mkdir()
        self.committed = False

    def _remove_stale(self) -> None:
        """Staging directories of killed writers (their pid is gone)."""
        prefix = f".{self.target.name}{_STAGING_MARK}"
        for entry in self.target.parent.glob(f"{prefix}*"):
            pid = entry.name[len(prefix) :].split("-")[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    def file(self, name: str) -> Path:
        return self.dir / name

    def write_info(self, info: IndexInfo) -> None:
        """index.json, with the size and sha256 of every staged data file (written before it)."""
        info.files = file_checksums(self.dir, info.data_files())
        self.file(INFO_FILE).write_text(info.to_json())

    def commit(self) -> None:
        """Publish the staged directory at ``path`` (replacing what was there, atomically where the OS allows)."""
        info = IndexInfo.from_json(self.file(INFO_FILE).read_bytes()) if self.file(INFO_FILE).is_file() else None
        index_files = [entry["file"] for entry in info.shards] if info is not None and info.shards else [INDEX_FILE]
        for name in (*index_files, ITEMS_FILE, IDS_FILE, INFO_FILE):
            if not self.file(name).is_file():
                raise RuntimeError(f"staged index lacks {name}")
        publish_directory(self.dir, self.target)
        self.committed = True

    def __enter__(self) -> StagedIndexDirectory:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            shutil.rmtree(self.dir, ignore_errors=True)


def is_index_directory(path: str | os.PathLike) -> bool:
    return (Path(path) / INFO_FILE).is_file()
