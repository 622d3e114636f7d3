"""Committing a job's processed rows, in the driver: shards bounded in rows *and* in time.

Processed rows reach the driver as the actors return them (one batch at a time, from the Ray plan or
from ``run_inline``); ``Committer`` holds them until a shard's worth (``WriteStage.rows``) is in, or
until the oldest of them has waited one commit window, then commits them. A ``kill -9`` therefore
loses at most one window of work, whatever the hardware's pace: on a GPU shards fill by rows, on a
CPU by time. The first window is short (``FIRST_WINDOW_S``: the first rows are on disk within seconds
of the first batch) and each doubles up to ``commit_every_s``, so a slow job writes one file per
window (60 an hour by default), a fast one full shards. Exactly-once needs nothing more: every row is
keyed, and a unit may commit several pieces (its marker waits for all of them).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.shards import commit_table

FIRST_WINDOW_S = 10.0  # the first commit comes this soon after the first processed rows (or commit_every_s)


def commit_rows(batch: pa.Table, fn: Callable, errors_dir: str, errors_schema: pa.Schema, unit_column: str) -> pa.Table:
    """Commit ``batch``: rows whose ``error`` is null through ``fn``, the others to ``errors_dir``.
    Returns how many rows of each unit (read attempt) were committed, and how many rows and errors."""
    tags = batch.column(unit_column)
    batch = batch.drop_columns([unit_column])
    ok = pc.is_null(batch.column("error"))
    good, bad = batch.filter(ok), batch.filter(pc.invert(ok))
    if good.num_rows:
        fn(good)
    if bad.num_rows:
        commit_table(bad.select(errors_schema.names).cast(errors_schema), errors_dir)
    counts = pc.value_counts(tags)
    units = counts.field("values").to_pylist() or [""]
    padding = [0] * (len(units) - 1)
    return pa.table(
        {
            "unit": pa.array(units, pa.string()),
            "count": pa.array(counts.field("counts").to_pylist() or [0], pa.int64()),
            "rows": pa.array([good.num_rows, *padding], pa.int64()),
            "errors": pa.array([bad.num_rows, *padding], pa.int64()),
        }
    )


class Committer:
    """Buffers processed rows and commits them by shard size or by window (see the module's docstring).

    ``commit(table) -> stats`` commits rows; ``every_s`` None commits by rows only."""

    def __init__(
        self, commit: Callable[[pa.Table], pa.Table], rows: int, every_s: float | None, clock=time.monotonic
    ) -> None:
        self.commit, self.rows, self.every_s, self.clock = commit, max(1, rows), every_s, clock
        self.window = None if every_s is None else min(FIRST_WINDOW_S, every_s)
        self.pending: list[pa.Table] = []
        self.waiting = 0
        self.oldest: float | None = None  # when the oldest uncommitted row arrived
        self.commits = 0

    def add(self, batch: pa.Table) -> list[pa.Table]:
        """Take a processed batch; returns the statistics of the commits it caused (often none)."""
        if batch.num_rows == 0:
            return []
        now = self.clock()
        self.pending.append(batch)
        self.waiting += batch.num_rows
        self.oldest = now if self.oldest is None else self.oldest
        stats = []
        while self.waiting >= self.rows:
            ready = pa.concat_tables(self.pending)
            stats.append(self._commit(ready.slice(0, self.rows)))
            rest = ready.slice(self.rows)
            self.pending, self.waiting = ([rest], rest.num_rows) if rest.num_rows else ([], 0)
            self.oldest = now if self.waiting else None
        return stats + self.tick()

    def tick(self) -> list[pa.Table]:
        """Commit what has waited one window (called as batches come, and every second between them)."""
        if not self.waiting or self.window is None or self.clock() - self.oldest < self.window:
            return []
        self.window = min(self.window * 2, self.every_s)
        return self.flush()

    def flush(self) -> list[pa.Table]:
        """Commit whatever is buffered (the end of the job)."""
        if not self.waiting:
            return []
        ready = pa.concat_tables(self.pending)
        self.pending, self.waiting, self.oldest = [], 0, None
        return [self._commit(ready)]

    def _commit(self, table: pa.Table) -> pa.Table:
        self.commits += 1
        return self.commit(table)
