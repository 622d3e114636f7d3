"""A job's output directory as resumable state: the lock, what is done, and the completion marker.

``JobOutput`` is what the runner (pipeline/runner/) needs of any job's output: committed files
*are* the manifest (a key is done when a committed file in one of the job's data folders holds it),
per-unit completion markers let a rerun skip whole units without reading them, a lock keeps a
second writer out, and ``_SUCCESS`` says the job finished. The embedding dataset's own
(``OutputDir``, docs/embedding-dataset.md) is in pipeline/io/embed_output.py.
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
    STATE_DIR,
    SUCCESS_MARKER,
    TMP_DIR,
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
