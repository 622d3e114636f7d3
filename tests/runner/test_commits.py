"""Commits bounded in rows and in time, and progress as rows are processed (issue 19). No Ray: the
runner's inline path drives the same ``Committer`` and progress bar as the Ray plan."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as pads

from pipeline.runner import run_job
from pipeline.runner.commit import FIRST_WINDOW_S, Committer

SLOW_JOB = str(Path(__file__).parent / "slow_job.py")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch(n: int) -> pa.Table:
    return pa.table({"id": [str(i) for i in range(n)]})


def test_rows_commit_when_a_shard_is_full_or_when_the_window_ends_and_windows_grow_to_commit_every_s():
    clock, committed = Clock(), []
    committer = Committer(lambda t: committed.append(t.num_rows) or t, rows=250, every_s=60.0, clock=clock)
    for second in range(0, 200):  # one 5-row batch a second: a 250-row shard takes 50 s
        clock.now = float(second)
        committer.add(batch(5))
    committer.flush()
    assert sum(committed) == 1000  # every row once
    assert FIRST_WINDOW_S == 10.0
    # by time: windows of 10, 20 and 40 s (11, 21 and 41 batches), then the 60 s window is longer than a shard
    assert committed[:4] == [55, 105, 205, 250]
    assert max(committed) == 250
    fast = []
    quick = Committer(lambda t: fast.append(t.num_rows) or t, rows=100, every_s=60.0, clock=Clock())
    for _ in range(10):
        quick.add(batch(30))
    assert fast == [100, 100, 100]  # a fast job: full shards, no time-cut pieces
    slow, alone = [], Clock()
    waiting = Committer(lambda t: slow.append(t.num_rows) or t, rows=100, every_s=60.0, clock=alone)
    waiting.add(batch(5))
    alone.now = FIRST_WINDOW_S - 1
    assert waiting.tick() == [] and slow == []
    alone.now = FIRST_WINDOW_S
    waiting.tick()
    assert slow == [5]  # the window ends on the clock, not when the next batch comes (it may take minutes)
    by_rows = []
    never = Committer(lambda t: by_rows.append(t.num_rows) or t, rows=100, every_s=None, clock=clock)
    clock.now = 0.0
    never.add(batch(5))
    clock.now = 10_000.0
    never.add(batch(5))
    assert by_rows == []  # commit_every_s null: by rows only


def test_progress_counts_rows_as_they_are_processed_and_commits_come_before_the_end(tmp_path, capsys):
    """A 500-row job (16-row batches, ~2 s of work) with one huge shard: the bar moves as batches are
    processed, and rows are committed in time windows, each row once."""
    sys.path.insert(0, str(Path(__file__).parent))
    from slow_job import slow_job

    out = tmp_path / "out"
    job = slow_job(str(out), 500, 16, 0.06, 0.5)
    job.progress = True
    run_job(job, finish=lambda result: {"rows": result.rows})
    bars = capsys.readouterr().err.replace("\r", "\n")
    counts = {int(n) for n in re.findall(r"\| *(\d+)/500 ", bars)}
    assert len([n for n in counts if 0 < n < 500]) >= 3, bars[-2000:]
    shards = list(out.glob("part-*.parquet"))
    assert len(shards) >= 3  # windows of 0.5 s, not one 100,000-row shard at the end
    ids = pads.dataset([str(s) for s in shards], format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == sorted(f"r{i}" for i in range(500))


def test_a_kill_at_a_random_moment_loses_at_most_one_commit_window_and_a_rerun_finishes_exactly_once(tmp_path):
    out, window = tmp_path / "out", 1.0
    args = [sys.executable, SLOW_JOB, str(out), "3000", "10", "0.05", str(window)]  # ~15 s of work, shards never fill
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    log = Path(str(out) + ".processed")
    deadline = time.time() + 120
    while not (log.exists() and log.read_text().count("\n") >= 10) and time.time() < deadline:
        time.sleep(0.1)  # started: the first batches are processed
    time.sleep(random.uniform(4.0, 8.0))  # past the ramp (1 s windows from the start: commit_every_s=1)
    proc.send_signal(signal.SIGKILL)
    killed_at = time.time()
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job ended before the kill: nothing was tested"
    processed = [tuple(map(float, line.split())) for line in log.read_text().splitlines()]
    done = processed[-1][1]
    committed = pads.dataset(str(out), format="parquet").count_rows() if list(out.glob("*.parquet")) else 0
    # what a window (plus the batch in hand and a second of slack on a loaded machine) could hold
    could_lose = done - max([n for t, n in processed if t <= killed_at - window - 1.0] or [0])
    assert committed > 0 and done - committed <= could_lose, (done, committed, could_lose)
    subprocess.run(args, check=True, stderr=subprocess.DEVNULL, timeout=300)
    ids = pads.dataset(str(out), format="parquet").to_table().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 3000  # each row exactly once
