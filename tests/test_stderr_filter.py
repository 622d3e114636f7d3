"""The CLI's filter of native stderr: Ray's C++ noise line dropped, everything else kept, nothing lost on a kill."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline.stderr_filter import copy_filtered, noise_pattern

NOISE = (
    b"[2026-12-02 12:08:49,853 E 13850 13850] core_worker.cc:2465: Actor with class name: "
    b"'MapWorker(MapBatches(_StageActor))' and ID: 'caa0727dd504eff61921382a01000000' has constructor arguments "
    b"in the object store and max_restarts > 0. If the arguments in the object store go out of scope or are lost, "
    b"the actor restart will fail. See https://github.com/ray-project/ray/issues/53727 for more details.\n"
)
OTHER_NATIVE = b"[2026-12-02 12:08:50,001 E 13850 13899] core_worker.cc:812: Failed to connect to the raylet.\n"


def _filter(chunks: list[bytes], hold_s: float = 5.0) -> bytes:
    """Write ``chunks`` one by one into a pipe read by copy_filtered; return what came out."""
    source_read, source_write = os.pipe()
    target_read, target_write = os.pipe()
    copier = threading.Thread(target=copy_filtered, args=(source_read, target_write, noise_pattern(), hold_s))
    copier.start()
    for chunk in chunks:
        os.write(source_write, chunk)
    os.close(source_write)
    copier.join(timeout=60)
    os.close(target_write)
    with os.fdopen(target_read, "rb") as out:
        data = out.read()
    os.close(source_read)
    return data


def test_drops_the_noise_line_and_keeps_the_rest() -> None:
    progress = [b"\rembed:   0%|          | 0/20 [00:00<?, ?rows/s]", b"\rembed: 100%|##| 20/20 [00:20<00:00]\n"]
    chunks = [progress[0], NOISE, OTHER_NATIVE, progress[1], b"Traceback (most recent call last):\n  [1, 2]\n"]
    assert (
        _filter(chunks) == progress[0] + OTHER_NATIVE + progress[1] + b"Traceback (most recent call last):\n  [1, 2]\n"
    )


def test_a_noise_line_split_across_writes_is_still_dropped() -> None:
    for cut in (1, 12, 30, 60, len(NOISE) - 1):
        assert _filter([b"before\n", NOISE[:cut], NOISE[cut:], b"after\n"]) == b"before\nafter\n"


def test_a_partial_line_that_looks_native_is_written_once_no_newline_comes() -> None:
    source_read, source_write = os.pipe()
    target_read, target_write = os.pipe()
    copier = threading.Thread(target=copy_filtered, args=(source_read, target_write, noise_pattern(), 0.05))
    copier.start()
    partial = b"[2026-12-02 12:08:49,853 E 1 1] core_worker"
    os.write(source_write, partial)
    received = b""
    while len(received) < len(partial):  # arrives while the source is still open (a hang fails by the test timeout)
        received += os.read(target_read, 1 << 16)
    assert received == partial
    os.close(source_write)
    copier.join(timeout=60)
    for fd in (source_read, target_read, target_write):
        os.close(fd)


SCRIPT = r"""
import os, signal, sys
from pipeline.stderr_filter import filter_native_stderr
NOISE = {noise!r}
with filter_native_stderr():
    print("python stderr is fd", sys.stderr.fileno(), file=sys.stderr, flush=True)
    os.write(2, NOISE + b"native: kept before the kill\n")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_what_a_killed_process_wrote_still_arrives(tmp_path: Path) -> None:
    err = tmp_path / "stderr"
    with err.open("wb") as stderr:
        proc = subprocess.run([sys.executable, "-c", SCRIPT.format(noise=NOISE)], stderr=stderr, timeout=120)
    assert proc.returncode == -9
    deadline_reads = 0
    text = err.read_bytes()
    while b"kept before the kill" not in text and deadline_reads < 600:  # the filter child drains after the kill
        time.sleep(0.1)
        deadline_reads += 1
        text = err.read_bytes()
    assert b"native: kept before the kill\n" in text
    assert b"has constructor arguments" not in text
    assert b"python stderr is fd 2" not in text  # Python's own writes went to the real stderr, not the pipe
    assert b"python stderr is fd" in text
