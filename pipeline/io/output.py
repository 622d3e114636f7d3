"""A job's output directory as resumable state: the lock, what is done, and the completion marker.

``JobOutput`` is what the runner (pipeline/runner/) needs of any job's output: committed files
*are* the manifest (a key is done when a committed file in one of the job's data folders holds it),
per-unit completion markers let a rerun skip whole units without reading them, a lock keeps a
second writer out, and ``_SUCCESS`` says the job finished. ``OutputDir`` is the embedding
dataset's (docs/embedding-dataset.md): the same, plus its recorded model and its dedup rules.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import posixpath
import shutil
import socket
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.errors import LatentError
from pipeline.io.publish import pid_alive
from pipeline.io.shards import (
    ERRORS_DIR,
    ERRORS_SCHEMA,
    STATE_DIR,
    SUCCESS_MARKER,
    TMP_DIR,
    EmbeddingInfo,
    commit_table,
    filesystem,
    list_shards,
    read_ids,
)

log = logging.getLogger(__name__)

LOCK_FILE = "lock"  # <state dir>/lock: who writes this output now (pid, host, since)
UNITS_DIR = "units"  # <state dir>/units/done/<unit id>: units whose every row is committed
READ_DIR = "read"  # <state dir>/units/read/<unit id>.<attempt>: rows a read attempt emitted


def unit_marker_name(unit_id: str) -> str:
    """A unit id as a file name (ids may hold any character)."""
    return hashlib.sha1(unit_id.encode()).hexdigest()[:20]


@dataclass
class LockInfo:
    pid: int
    host: str
    since: str

    def describe(self) -> str:
        return f"pid {self.pid} on host {self.host}, since {self.since}"

    @classmethod
    def parse(cls, text: str | bytes) -> LockInfo | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


def _here() -> LockInfo:
    return LockInfo(os.getpid(), socket.gethostname(), time.strftime("%Y-%m-%d %H:%M:%S %z"))


def writable_error(path: str, err: OSError) -> LatentError:
    """An OSError met writing ``path``, as what the user can do about it (a rerun resumes)."""
    reasons = {
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is exhausted",
        errno.EROFS: "the filesystem is read-only",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENOTDIR: "a file is in the way of a folder",
        errno.EEXIST: "a file is in the way of a folder",
    }
    reason = reasons.get(err.errno, err.strerror or str(err))
    where = getattr(err, "filename", None)
    if not isinstance(where, str) or "\n" in where or len(where) > 500:  # a re-raised error's message, not a path
        where = path
    return LatentError(
        f"cannot write the output {path}: {reason} ({where}). Fix that and rerun the same command: "
        f"finished work is kept and the job resumes."
    )


class JobOutput:
    """The output directory of a runner job.

    ``data_dirs``: folders (relative to the root, "" for the root itself) whose committed Parquet
    files hold the job's rows; ``key``: the column naming each input row (the unit of exactly-once).
    """

    def __init__(self, path: str, data_dirs: Iterable[str] = ("", ERRORS_DIR), key: str = "id") -> None:
        self.path = str(path)
        self.fs, self.root = filesystem(self.path)
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        self.data_dirs = [posixpath.join(self.root, d) if d else self.root for d in data_dirs]
        self.key = key
        self.state_dir = posixpath.join(self.root, STATE_DIR)
        self.errors_dir = posixpath.join(self.root, ERRORS_DIR)
        self.units_dir = posixpath.join(self.state_dir, UNITS_DIR)
        self._lock_fd: int | None = None
        self._lock_depth = 0  # lock() is re-entrant: a command holds it from the start, the runner within

    # -- completion ---------------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        return self.fs.exists(posixpath.join(self.root, SUCCESS_MARKER))

    def recorded_summary(self) -> dict:
        path = posixpath.join(self.state_dir, "summary.json")
        return json.loads(self.fs.cat_file(path)) if self.fs.exists(path) else {}

    def mark_complete(self, summary: dict) -> None:
        self.fs.pipe_file(posixpath.join(self.state_dir, "summary.json"), json.dumps(summary, indent=2).encode())
        self.fs.pipe_file(posixpath.join(self.root, SUCCESS_MARKER), json.dumps(summary).encode())

    # -- preparing and checking the folder ----------------------------------------------------------

    def prepare(self) -> None:
        """Create the state folder, and prove the output writable now (before any work) with a clear message."""
        try:
            if self.fs.exists(self.root) and not self.fs.isdir(self.root):
                raise NotADirectoryError(errno.ENOTDIR, "a file, not a folder", self.root)
            self.fs.makedirs(self.state_dir, exist_ok=True)
            probe = posixpath.join(self.state_dir, f".probe-{os.getpid()}")
            self.fs.pipe_file(probe, b"ok")
            self.fs.rm(probe)
        except OSError as err:
            raise writable_error(self.path, err) from err

    def clean_tmp(self) -> None:
        for directory in self.data_dirs:
            tmp = posixpath.join(directory, TMP_DIR)
            if self.fs.exists(tmp):
                self.fs.rm(tmp, recursive=True)

    # -- the lock ---------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[LockInfo | None]:
        """Hold the output for this process; yields the lock of a dead run that was taken over (or None).

        Local folders use flock(2): the kernel drops the lock when its process dies, so a killed run
        never leaves the output locked. Elsewhere (object stores) a lock file naming pid and host is
        taken over when its pid is gone on this host."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield None
            finally:
                self._lock_depth -= 1
            return
        self.fs.makedirs(self.state_dir, exist_ok=True)
        taken_over = self._acquire_local() if self.local else self._acquire_remote()
        self._lock_depth = 1
        if taken_over:
            log.warning(
                "took over the output lock of a run that ended without releasing it (%s)", taken_over.describe()
            )
        try:
            yield taken_over
        finally:
            self._lock_depth = 0
            self._release()

    def _refuse(self, holder: LockInfo | None) -> LatentError:
        who = holder.describe() if holder else "another run"
        return LatentError(
            f"output.path {self.path} is being written by {who}. Wait for that run to finish (or stop it), "
            f"or use another output.path."
        )

    def _acquire_local(self) -> LockInfo | None:
        import fcntl

        path = posixpath.join(self.state_dir, LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = LockInfo.parse(os.pread(fd, 4096, 0))
            os.close(fd)
            raise self._refuse(holder) from None
        previous = LockInfo.parse(os.pread(fd, 4096, 0))  # left by a run that died holding it
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_here().__dict__).encode(), 0)
        self._lock_fd = fd
        return previous

    def _acquire_remote(self) -> LockInfo | None:
        path = posixpath.join(self.state_dir, LOCK_FILE)
        previous = None
        if self.fs.exists(path):
            previous = LockInfo.parse(self.fs.cat_file(path))
            here = _here()
            if previous and not (previous.host == here.host and not pid_alive(previous.pid)):
                raise self._refuse(previous)
        self.fs.pipe_file(path, json.dumps(_here().__dict__).encode())
        return previous

    def _release(self) -> None:
        if self._lock_fd is not None:
            import fcntl

            with contextlib.suppress(OSError):
                os.ftruncate(self._lock_fd, 0)  # an empty lock file: released cleanly
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None
        elif not self.local:
            with contextlib.suppress(OSError, FileNotFoundError):
                self.fs.rm(posixpath.join(self.state_dir, LOCK_FILE))

    # -- what is done -------------------------------------------------------------------------------

    def shard_paths(self) -> list[str]:
        return list_shards(self.data_dirs[0])

    def error_paths(self) -> list[str]:
        return list_shards(self.errors_dir)

    def committed_paths(self) -> list[str]:
        return [p for d in self.data_dirs for p in list_shards(d)]

    def done_keys(self) -> pa.Array:
        """Keys already committed, in any data folder (rows and recorded errors)."""
        paths = self.committed_paths()
        ids = read_ids(paths, self.key).combine_chunks() if paths else pa.array([], pa.string())
        return pc.unique(ids) if len(ids) else ids

    def done_units(self) -> set[str]:
        """File names (``unit_marker_name``) of units whose every row was committed by an earlier run."""
        done = posixpath.join(self.units_dir, "done")
        if not self.fs.exists(done):
            return set()
        return {posixpath.basename(p) for p in self.fs.ls(done, detail=False)}

    def mark_units_done(self, markers: Iterable[str]) -> None:
        """Mark units done by their marker names (``unit_marker_name``: what ``done_units`` lists)."""
        done = posixpath.join(self.units_dir, "done")
        self.fs.makedirs(done, exist_ok=True)
        for marker in markers:
            self.fs.pipe_file(posixpath.join(done, marker), b"")

    def read_counts(self) -> dict[str, int]:
        """``<unit marker>.<attempt>`` -> rows that read attempt emitted (written by read tasks)."""
        directory = posixpath.join(self.units_dir, READ_DIR)
        if not self.fs.exists(directory):
            return {}
        return {posixpath.basename(p): int(self.fs.cat_file(p)) for p in self.fs.ls(directory, detail=False)}

    def clear_units(self) -> None:
        self._remove_tree(self.units_dir)

    def clear_read_counts(self) -> None:
        self._remove_tree(posixpath.join(self.units_dir, READ_DIR))

    def _remove_tree(self, directory: str) -> None:
        if not self.fs.exists(directory):
            return
        if isinstance(self.fs, LocalFileSystem):
            # fsspec's local rm compares each path with os.getcwd(), which raises once the working
            # directory is gone (seen in Ray Jobs API drivers, whose working_dir Ray may remove first)
            shutil.rmtree(directory)
        else:
            self.fs.rm(directory, recursive=True)

    def remove_duplicates(self) -> int:
        """Keep one row per key in each data folder (a task retried after its commit writes its rows
        twice); the first file by name keeps the row. Returns the number of rows removed."""
        removed = 0
        for directory in self.data_dirs:
            paths = list_shards(directory)
            counts = Counter(read_ids(paths, self.key).to_pylist()) if paths else Counter()
            if not any(n > 1 for n in counts.values()):
                continue
            seen: set = set()
            for path in paths:
                table = pq.read_table(self.fs.open(path, "rb"))
                keep = []
                for key in table.column(self.key).to_pylist():
                    keep.append(counts[key] == 1 or key not in seen)
                    seen.add(key)
                if all(keep):
                    continue
                removed += keep.count(False)
                kept = table.filter(pa.array(keep))
                if kept.num_rows:
                    commit_table(kept, directory)
                self.fs.rm(path)
        if removed:
            log.warning("removed %d rows written twice (a retried task)", removed)
        return removed


@dataclass
class DatasetCounts:
    rows: int
    errors: int


def _modality_setting(info: EmbeddingInfo) -> str:
    return "modality=auto" if info.optional else f"modality={info.modality}"


class OutputDir(JobOutput):
    """An embedding dataset directory being written by `latent embed`."""

    def __init__(self, path: str) -> None:
        super().__init__(path, data_dirs=("", ERRORS_DIR), key="id")

    def recorded_info(self) -> EmbeddingInfo | None:
        path = posixpath.join(self.state_dir, "embedding.json")
        return EmbeddingInfo.from_json(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def claim(self, info: EmbeddingInfo) -> None:
        """Record ``info`` for a new dataset, or refuse one recorded with another model or dimension."""
        recorded = self.recorded_info()
        if recorded is not None:
            problems = recorded.compatible_with(info)
            if problems:
                how = "Use a new output.path, or delete the old one."
                if recorded.modality != info.modality or recorded.optional != info.optional:
                    how = (
                        f"Rerun with the modality it was written with ({_modality_setting(recorded)}) to resume it, "
                        f"or use a new output.path."
                    )
                raise LatentError(
                    f"output.path {self.path} already holds embeddings of another model or shape "
                    f"({'; '.join(problems)}). {how}"
                )
            return
        if list_shards(self.path):
            raise LatentError(f"output.path {self.path} holds Parquet files that latent did not write; use a new one")
        try:
            self.fs.makedirs(self.state_dir, exist_ok=True)
            self.fs.pipe_file(posixpath.join(self.state_dir, "embedding.json"), info.to_json().encode())
        except OSError as err:
            raise writable_error(self.path, err) from err

    def done_ids(self) -> pa.Array:
        """Ids already written, as shards or as recorded errors."""
        return self.done_keys()

    def remove_duplicates(self) -> int:
        """Keep one row per id. Duplicates come from a task retried after its commit, or from the
        input itself; the first shard (by name) keeps the row, later ones are rewritten without it and
        input duplicates are recorded as errors. Returns the number of rows removed."""
        paths = self.shard_paths()
        counts = Counter(read_ids(paths).to_pylist()) if paths else Counter()
        duplicated = {i for i, n in counts.items() if n > 1}
        if not duplicated:
            return 0
        first_source: dict[str, str | None] = {}
        removed = 0
        for path in paths:
            table = pq.read_table(self.fs.open(path, "rb"))
            keep, input_duplicates = [], []
            for row_id, source in zip(table.column("id").to_pylist(), table.column("source").to_pylist()):
                is_first = row_id not in duplicated or row_id not in first_source
                keep.append(is_first)
                if row_id not in duplicated:
                    continue
                if is_first:
                    first_source[row_id] = source
                elif source != first_source[row_id]:  # same source twice is a retried task, not an input error
                    input_duplicates.append(
                        {"id": row_id, "source": source, "error": f"duplicate id (kept {first_source[row_id]})"}
                    )
            if all(keep):
                continue
            removed += keep.count(False)
            kept = table.filter(pa.array(keep))
            if kept.num_rows:
                commit_table(kept, self.root)
            self.fs.rm(path)
            if input_duplicates:
                commit_table(pa.Table.from_pylist(input_duplicates, schema=ERRORS_SCHEMA), self.errors_dir)
        log.warning("removed %d rows whose id was already in the dataset", removed)
        return removed

    def counts(self) -> DatasetCounts:
        rows = sum(pq.ParquetFile(self.fs.open(p, "rb")).metadata.num_rows for p in self.shard_paths())
        errors = len(read_ids(self.error_paths()).unique()) if self.error_paths() else 0
        return DatasetCounts(rows, errors)
