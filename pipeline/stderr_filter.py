"""Drop native log lines the user can do nothing about from the process's stderr (fd 2), at the CLI's edge.

Ray's C++ core writes some warnings straight to file descriptor 2, where no Python logger can reach
them. ``filter_native_stderr`` points fd 2 at a pipe read by a small child process that copies
everything to the real stderr except lines matching ``NATIVE_NOISE``. Python's own ``sys.stderr``
(progress bars, log records, tracebacks) keeps writing to the real stderr directly when it was fd 2,
so it stays a terminal where it was one and nothing of it is delayed. The copy is a separate process
so that whatever a dying process wrote (a C++ abort message) still gets through: the child drains the
pipe until every writer has closed it.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator

# core_worker's "actor ... has constructor arguments in the object store and max_restarts > 0" (logged as an
# error on every job): Ray Data passes its own object refs to each actor-pool actor and restarts actors by
# default (ray#53727, ray#57733); latent relies on those restarts to survive a lost node.
NATIVE_NOISE = (
    rb"core_worker\.cc:\d+: Actor with class name: [^\n]*has constructor arguments in the object store"
    rb" and max_restarts > 0[^\n]*\n",
)
_HEADER = rb"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z] \d+ \d+\] "  # Ray's C++ log prefix
_TEMPLATE = b"[0000-00-00 00:00:00,000 "  # its fixed-width start: 0 stands for a digit
HOLD_S = 0.2  # how long a partial line that may be a native log line waits for its end


def noise_pattern(patterns: tuple[bytes, ...] = NATIVE_NOISE) -> re.Pattern[bytes]:
    """One regex matching a whole noise line (Ray's C++ prefix, the message, its newline)."""
    return re.compile(_HEADER + b"(?:" + b"|".join(patterns) + b")")


def _may_start_native_line(text: bytes) -> bool:
    """Whether ``text`` could be the beginning of a line in Ray's C++ log format."""
    return all(48 <= byte <= 57 if expected == 48 else byte == expected for byte, expected in zip(text, _TEMPLATE))


def _split_held(pending: bytes) -> tuple[bytes, bytes]:
    """A partial line -> (what can be written now, what must wait: a possible native line's start)."""
    start = pending.find(b"[")
    while start != -1:
        if _may_start_native_line(pending[start:]):
            return pending[:start], pending[start:]
        start = pending.find(b"[", start + 1)
    return pending, b""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def copy_filtered(source: int, target: int, pattern: re.Pattern[bytes], hold_s: float = HOLD_S) -> None:
    """Copy ``source`` to ``target`` until end of file, without the lines ``pattern`` matches.

    Whole lines are filtered; a partial line (a progress bar's ``\\r`` update) is written at once, unless
    its tail may be the start of a native log line, which then waits at most ``hold_s`` for its newline."""
    pending = b""
    while True:
        if pending and not select.select([source], [], [], hold_s)[0]:
            _write_all(target, pending)  # no newline came: not a line to drop
            pending = b""
            continue
        chunk = os.read(source, 1 << 16)
        if not chunk:
            break
        lines, newline, pending = (pending + chunk).rpartition(b"\n")
        if newline:
            _write_all(target, pattern.sub(b"", lines + newline))
        ready, pending = _split_held(pending)
        if ready:
            _write_all(target, ready)
    if pending:
        _write_all(target, pending)


@contextlib.contextmanager
def filter_native_stderr() -> Iterator[None]:
    """Within the block, fd 2 goes through a child process that drops ``NATIVE_NOISE`` lines."""
    sys.stderr.flush()
    real = os.dup(2)
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.stderr_filter"], stdin=read_end, stdout=real, stderr=real
        )
    except OSError:  # no filter rather than no job
        for fd in (real, read_end, write_end):
            os.close(fd)
        yield
        return
    os.close(read_end)
    python_stderr = sys.stderr
    if _fileno(python_stderr) == 2:  # Python's writes skip the pipe (a terminal stays a terminal)
        sys.stderr = open(  # noqa: SIM115  (restored, not closed: the descriptor is fd 2's original)
            real, "w", buffering=1, encoding=python_stderr.encoding, errors="backslashreplace", closefd=False
        )
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        sys.stderr = python_stderr
        os.dup2(real, 2)  # closes this process's last write end: the child drains the pipe and exits
        os.close(real)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=5)  # a process started meanwhile may still hold the pipe; the child outlives it


def _fileno(stream: object) -> int | None:
    try:
        return stream.fileno()  # type: ignore[attr-defined]
    except (AttributeError, OSError, ValueError):
        return None


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: drain until the job ends
    copy_filtered(sys.stdin.fileno(), sys.stdout.fileno(), noise_pattern())


if __name__ == "__main__":
    main()
