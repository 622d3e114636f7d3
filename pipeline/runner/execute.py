"""Running a job: the lock, resume, progress, unit markers, restarts of starved stages, faults as clear messages."""

from __future__ import annotations

import errno
import logging
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import LatentError
from pipeline.runner.commit import Committer, commit_rows
from pipeline.runner.job import Job, JobInterrupted, JobResult, check_error_fraction
from pipeline.runner.output import JobOutput, unit_marker_name, writable_error
from pipeline.runner.plan import UNIT_COLUMN, ahead, build_plan, run_inline, stop_plan, with_ids
from pipeline.runner.watchdog import Stalled, Watchdog, check_schedulable, fitted_pool
from pipeline.runtime import RunRecord, ray_session

log = logging.getLogger(__name__)

UNIT_POLL_SECONDS = 5.0  # how often completed units get their markers while the job runs


# -- running ---------------------------------------------------------------------------------------


def _cause(err: BaseException) -> BaseException | None:
    """The LatentError or OSError behind an exception that Ray wrapped (task errors, user code errors)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [err]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, LatentError | OSError) and not type(e).__module__.startswith("ray"):
            return e
        stack += [getattr(e, "cause", None), e.__cause__, e.__context__]
    return _cause_in_text(str(err))


def _cause_in_text(text: str) -> BaseException | None:
    """A task's exception chain does not survive Ray's serialisation, only its traceback text: read it there."""
    found = re.findall(r"(?:pipeline\.errors\.)?LatentError: ([^\n]+)", text)
    if found:
        return LatentError(found[-1].strip())
    found = re.findall(r"(\w*Error): \[Errno (\d+)\] ([^\n:']+)(?:: '([^'\n]+)')?", text)
    if found:
        _, number, message, filename = found[-1]
        return OSError(int(number), message.strip(), filename or None)
    return None


def _about_output(err: OSError, output: JobOutput) -> bool:
    """Whether an OSError met while running is the output's (a full or read-only disk), not an input's."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
        return True
    return str(getattr(err, "filename", "") or "").startswith(output.root)


def _progress(job: Job, total: int | None):
    from tqdm import tqdm

    return tqdm(
        total=total, unit=job.row_label, desc=job.name, disable=not job.progress, file=sys.stderr, dynamic_ncols=True
    )


def _execute(
    job: Job, plan: Callable[[str | None], Iterator[pa.Table]], total: int | None, record: RunRecord | None = None
) -> tuple[int, int, float]:
    """Consume the processed batches: commits (by rows and by time), progress as rows come (rate and ETA),
    the error fraction, unit markers. ``plan(None)`` gives the batches; when the watchdog asks for a restart
    (the pool starves its readers, ``watchdog.py``), the rows that came are committed, the plan is stopped
    (its actors released) and ``plan(why)`` gives the batches of what is left. Returns (rows, errors, pace)."""
    output = job.output
    seen = failed = 0  # rows processed (and failed) so far: the progress
    rows = errors = 0  # rows committed (and errors recorded)
    by_attempt: Counter[str] = Counter()
    marked: set[str] = set()
    first: tuple[float, int] | None = None
    last = polled = time.monotonic()
    committer = Committer(
        partial(
            commit_rows,
            fn=job.write.fn,
            errors_dir=output.errors_dir,
            errors_schema=job.write.errors_schema,
            unit_column=UNIT_COLUMN,
        ),
        job.write.rows,
        job.commit_every_s,
    )

    def committed(stats: list[pa.Table]) -> None:
        nonlocal rows, errors
        for table in stats:
            rows += pc.sum(table.column("rows")).as_py()
            errors += pc.sum(table.column("errors")).as_py()
            by_attempt.update(dict(zip(table.column("unit").to_pylist(), table.column("count").to_pylist())))

    watchdog = Watchdog(job, record)
    if not job.inline:  # in this process nothing waits on a cluster
        watchdog.start()
    try:
        try:
            with _progress(job, total) as bar:
                batches: Iterator[pa.Table] | None = plan(None)
                while batches is not None:
                    # a thread pulls the batches: commit windows end on time even while a batch takes minutes
                    stream = ahead(batches, tick=1.0)
                    for batch in stream:
                        if watchdog.restart:
                            break
                        if batch is None:
                            committed(committer.tick())
                            continue
                        good = batch.column("error").null_count  # rows the stage did not fail
                        seen, failed = seen + good, failed + batch.num_rows - good
                        watchdog.progress()
                        last = watchdog.last_progress
                        first = first or (last, seen + failed)
                        bar.update(batch.num_rows)
                        if failed:
                            bar.set_postfix(errors=failed, refresh=False)
                        check_error_fraction(seen, failed, job.max_error_fraction, output.path, final=False)
                        committed(committer.add(batch))
                        if last - polled > UNIT_POLL_SECONDS:
                            _mark_finished_units(output, by_attempt, marked)
                            polled = last
                    else:
                        batches = None
                        continue
                    why = watchdog.restart
                    stream.close()
                    committed(committer.flush())  # what came is committed: the next plan skips it
                    _mark_finished_units(output, by_attempt, marked)
                    batches = plan(why)  # stops this plan (its actors release their CPUs), plans the rest
                    watchdog.restarted()
                committed(committer.flush())
            _mark_finished_units(output, by_attempt, marked)
        finally:
            watchdog.stop()
    except Stalled:
        raise LatentError(
            f"latent {job.name} is stuck: {watchdog.reason}. Finished work is kept: fix the cluster or "
            f"the resources and rerun the same command to resume."
        ) from None
    except LatentError:
        raise
    except Exception as err:
        cause = _cause(err)
        if isinstance(cause, LatentError):
            raise LatentError(str(cause)) from None
        if isinstance(cause, OSError) and _about_output(cause, output):
            raise writable_error(output.path, cause) from None
        raise
    steady = (seen + failed - first[1]) / (last - first[0]) if first and last > first[0] else 0.0
    return rows, errors, steady


class _Plans:
    """``plans(None)``: the batches of ``units``; ``plans(why)``, after a restart: the running plan stopped, a
    new plan of the units not finished, skipping the rows committed so far, its pool sized to what the live
    nodes hold beside a reader. ``stop()``: the running plan stopped (a job that failed leaves no actors)."""

    def __init__(self, job: Job, units: list[dict], done: pa.Array, record: RunRecord) -> None:
        self.job, self.units, self.done, self.record = job, units, done, record
        self.running = None  # the Ray Data dataset being iterated

    def stop(self) -> None:
        if self.running is not None:
            stop_plan(self.running)
            self.running = None

    def __call__(self, why: str | None) -> Iterator[pa.Table]:
        job, todo, skip = self.job, self.units, self.done
        self.stop()
        if why is not None:
            todo, skip, _, _ = _left_to_do(job, todo)
            if not todo:
                return iter(())
            job = fitted_pool(job)
            actors = job.process.resources.actors
            log.warning(
                "%s: restarting the stages with %d actor(s) (%s); rows in flight are redone", job.name, actors, why
            )
            self.record.event("stages_restarted", reason=why, actors=actors, units_left=len(todo))
        self.running = build_plan(job, todo, skip if len(skip) else None)
        # prefetch_batches=0: with prefetching, each stats block waits for the next one (a shard late).
        return self.running.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)


def _left_to_do(job: Job, units: list[dict]) -> tuple[list[dict], pa.Array, set[str], int | None]:
    """What is left of ``units`` (with ids), at the start (after an earlier run) and at a restart of the stages:
    the units without a finished marker, less those ``job.drop_done`` knows done before reading (image
    folders); the keys committed so far (rows to skip); the finished units; the rows left (None: unknown)."""
    output = job.output
    done, finished = output.done_keys(), output.done_units()
    todo = [u for u in units if unit_marker_name(u["unit_id"]) not in finished]
    total = None if job.total_rows is None else max(0, job.total_rows - len(done))
    if job.drop_done is not None:
        todo, total = job.drop_done(todo, done)
    return todo, done, finished, total


def _mark_finished_units(output: JobOutput, by_attempt: Counter, marked: set[str]) -> None:
    """Mark units whose read attempt's rows are all committed (attempts of retried reads never complete)."""
    finished = []
    for tag, emitted in output.read_counts().items():
        unit = tag.rsplit(".", 1)[0]
        if unit not in marked and by_attempt[tag] >= emitted:
            finished.append(unit)
            marked.add(unit)
    output.mark_units_done(finished)


def run_job(job: Job, finish: Callable[[JobResult], dict[str, Any]]) -> dict[str, Any]:
    """Run ``job`` to completion (resuming what an earlier run left), holding its output's lock.

    ``finish`` gets this run's counts and returns the summary, recorded in the run record and in
    ``_latent/summary.json``; ``_SUCCESS`` is written last. Raises LatentError with what to do."""
    started = time.perf_counter()
    output = job.output
    output.prepare()
    with output.lock():
        try:
            output.clean_tmp()
            output.clear_read_counts()
            session = {"inline": True} if job.inline else ray_session()
            record = RunRecord.start(output.state_dir, job.config, ray=session)
            units, done, finished, total = _left_to_do(job, with_ids(job.units))
            if finished or len(done):
                print(
                    f"latent {job.name}: resuming: {len(finished):,} units and {len(done):,} rows finished earlier "
                    f"are kept; {len(units):,} units to do",
                    file=sys.stderr,
                )
            rows = errors = 0
            steady = 0.0
            if units and job.inline:
                inline = run_inline(job, units, done if len(done) else None)
                rows, errors, steady = _execute(job, lambda _: inline, total)
            elif units:  # nothing left: no plan at all (Ray Data would only say it received 0 inputs)
                check_schedulable(job)
                plans = _Plans(job, units, done, record)
                try:
                    rows, errors, steady = _execute(job, plans, total, record)
                finally:
                    plans.stop()
            output.remove_duplicates()
            wall = time.perf_counter() - started
            result = JobResult(
                rows=rows,
                errors=errors,
                wall_seconds=round(wall, 3),
                rows_per_second=round((rows + errors) / wall, 2) if wall else 0.0,
                steady_rows_per_second=round(steady, 2),
            )
            summary = finish(result)
            output.mark_complete(summary)
            output.clear_units()  # complete: the markers served their purpose
            record.finish(summary)
        except KeyboardInterrupt:
            raise JobInterrupted("interrupted; rerun the same command to resume") from None
        except OSError as err:
            if _about_output(err, output):
                raise writable_error(output.path, err) from err
            raise
    return summary
