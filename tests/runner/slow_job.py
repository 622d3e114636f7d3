"""A runner job whose stage takes a known time per batch, run inline (no Ray): for the commit-window tests.

``python tests/runner/slow_job.py OUT ROWS BATCH SECONDS_PER_BATCH COMMIT_EVERY_S`` writes OUT/ (keys "r0".."rN-1")
and appends "<unix time> <rows processed>" to OUT.processed after each batch, so a test that kills it
knows what work was done and when."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from functools import partial

import pyarrow as pa

from pipeline.io.shards import ERRORS_SCHEMA, commit_table
from pipeline.runner import ActorResources, ActorStage, Job, ReadStage, WriteStage, run_job
from pipeline.runner.output import JobOutput


def read(unit: dict, done: pa.Array | None, rows: int) -> Iterator[pa.Table]:
    skip = set(done.to_pylist()) if done is not None else set()
    ids = [f"r{i}" for i in range(unit["start"], unit["start"] + unit["rows"]) if f"r{i}" not in skip]
    for start in range(0, len(ids), rows):
        part = ids[start : start + rows]
        yield pa.table({"id": part, "source": part, "error": pa.nulls(len(part), pa.string())})


class Slow:
    def __init__(self, seconds: float, log: str, threads: int | None) -> None:
        self.seconds, self.log, self.done = seconds, log, 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        time.sleep(self.seconds)
        self.done += batch.num_rows
        with open(self.log, "a") as f:
            f.write(f"{time.time()} {self.done}\n")
        return batch


def slow_job(out: str, rows: int, batch: int, seconds: float, commit_every_s: float | None) -> Job:
    units = [{"unit_id": f"u{s}", "start": s, "rows": min(100, rows - s)} for s in range(0, rows, 100)]
    return Job(
        name="slow",
        output=JobOutput(out),
        config={},
        units=units,
        total_rows=rows,
        read=ReadStage(partial(read, rows=batch)),
        process=ActorStage(Slow, {"seconds": seconds, "log": out + ".processed"}, ActorResources(1, 1, 0, 1), batch),
        write=WriteStage(partial(commit_table, directory=out), rows=100_000, errors_schema=ERRORS_SCHEMA),
        commit_every_s=commit_every_s,
        inline=True,
    )


if __name__ == "__main__":
    out, rows, batch, seconds, every = sys.argv[1:6]
    run_job(slow_job(out, int(rows), int(batch), float(seconds), float(every)), finish=lambda result: {})
