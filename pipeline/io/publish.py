"""Publishing a finished directory in one step, and telling a writer's live process from a dead one's.

Writers (index directories, maps) build their output in a hidden staging directory named with their pid,
then ``publish_directory`` moves it into place: a reader sees the old directory or the new one, never a mix.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
import uuid
from pathlib import Path

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


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2); False where the OS cannot."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


def publish_directory(staged: Path, target: Path) -> None:
    """Move the finished directory ``staged`` to ``target``, replacing what was there in one atomic step
    where the OS allows (renameat2 exchange), then remove the old one. Used for index and map directories."""
    _fsync_tree(staged)
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
