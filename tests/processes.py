"""A `latent` command as a process group of its own, and SIGKILL of the whole group: what the
kill -9 tests (embed, knn, map) do to a real job, its Ray and its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys

# A command started from a background shell (`make test &`, nohup) inherits SIGINT ignored, and Python then
# installs no KeyboardInterrupt handler: the Ctrl-C tests would test nothing. The command is exec'd with
# SIGINT's default restored (an exec, not preexec_fn: the test process has threads).
_DEFAULT_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
)


def start_group(args: list[str]) -> subprocess.Popen:
    """``args`` in a new session (its pid is the group id), SIGINT's default action restored, stdout and
    stderr merged, Ray auth off."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        [sys.executable, "-c", _DEFAULT_SIGINT, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
