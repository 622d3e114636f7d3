"""Publishing a finished directory in one step, and telling a writer's live process from a dead one's.

Writers (index directories, maps) build their output in a hidden staging directory named with their pid,
then ``publish_directory`` moves it into place: a reader sees the old directory or the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

from pipeline.errors import LatentError

_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (a staging directory or lock of a killed writer: it does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _fsync_tree(root: Path) -> None:
    for item in [*root.iterdir(), root]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _renameat2(a: Path, b: Path, flags: int) -> int | None:
    """Linux renameat2: 0, an errno, or None where the OS has no such call."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return None
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), flags) == 0:
        return 0
    return ctypes.get_errno()


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2); False where the OS cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE) == 0


def _create(staged: Path, target: Path, what: str) -> None:
    """``staged`` -> ``target`` only if nothing is there (an empty folder counts as nothing): the create
    check made at the very publish, so that of two runs creating one output, one is refused."""
    with contextlib.suppress(OSError):
        target.rmdir()  # an empty folder the user made for the output: not a result to keep
    code = _renameat2(staged, target, _RENAME_NOREPLACE)
    if code is None or code in (errno.EINVAL, errno.ENOSYS):  # no renameat2 / a filesystem without the flag
        code = errno.EEXIST if target.exists() else 0
        if not code:
            os.rename(staged, target)
    if code == errno.EEXIST:
        shutil.rmtree(staged, ignore_errors=True)
        raise LatentError(f"{what}={target} was created by another run meanwhile: nothing written by this one")
    if code:
        raise OSError(code, os.strerror(code), str(target))


def publish_directory(staged: Path, target: Path, create: str | None = None) -> None:
    """Move the finished directory ``staged`` to ``target``, replacing what was there in one atomic step
    where the OS allows (renameat2 exchange), then remove the old one. Used for index and map directories.

    ``create`` (the output's key, e.g. ``output.path``): refuse, naming it, if ``target`` exists by now."""
    _fsync_tree(staged)
    if create is not None:
        _create(staged, target, create)
        return
    if not target.exists():
        os.rename(staged, target)
        return
    if not _exchange(staged, target):
        # two renames: a crash between them leaves the old directory under a hidden name
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, old)
        os.rename(staged, target)
        staged = old
    shutil.rmtree(staged, ignore_errors=True)  # after an exchange, this holds the old directory


@contextlib.contextmanager
def hold_target(target: Path, key: str) -> Iterator[None]:
    """Hold the right to publish ``target`` from a command's start to its publish: a second command writing
    the same output (``key``) is refused at once, naming the holder, instead of silently replacing the first's
    result. flock(2) on ``.<name>.lock`` beside it: the kernel drops it when its process dies."""
    target = Path(target).absolute()
    if target.exists() and not target.is_dir():
        raise LatentError(f"{key}={target} is a file: give a folder (a new path)")
    lock = target.parent / f".{target.name}.lock"
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise LatentError(f"{key}={target}: cannot write beside it ({err.strerror})") from err
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another run"
            os.close(fd)
            raise LatentError(
                f"{key}={target} is being written by {holder}: wait for that run to finish (or stop it), "
                f"or use another {key}"
            ) from None
        if _same_file(fd, lock):
            break
        os.close(fd)  # its holder removed the file as we opened it: lock the one at the path now
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S %z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}, since {since}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)  # while still held: a run that opened it meanwhile sees it gone and opens anew
        os.close(fd)  # closing releases the flock


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def refuse_output_inside_inputs(outputs: Mapping[str, str | None], inputs: Mapping[str, str | None]) -> None:
    """An output folder equal to or inside an input folder would be read back as input by this or a later run
    (and its staging folders with it): refused before anything is written. Keys name the settings."""
    for out_key, out in outputs.items():
        if not out or "://" in str(out):
            continue
        where = Path(out).expanduser().resolve()
        for in_key, given in inputs.items():
            if not given or "://" in str(given):
                continue
            source = Path(given).expanduser().resolve()
            if where == source or source in where.parents:
                raise LatentError(
                    f"{out_key}={out} is inside {in_key}={given}: it would be read back as input. "
                    f"Write it elsewhere (e.g. beside it, {source.parent / (source.name + '-out')})"
                )
