"""A `latent` command as a process group of its own, and SIGKILL of the whole group: what the
kill -9 tests (embed, knn, map) do to a real job, its Ray and its workers."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def start_group(args: list[str]) -> subprocess.Popen:
    """``args`` in a new session (its pid is the group id), stdout and stderr merged, Ray auth off."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
