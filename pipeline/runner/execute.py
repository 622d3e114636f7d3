"""Running a job: the lock, resume, progress, unit markers, the stall watchdog, faults as clear messages."""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import sys
import threading
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
from pipeline.runner.plan import UNIT_COLUMN, ahead, build_plan, run_inline, with_ids
from pipeline.runtime import RunRecord, draining_nodes, ray_session, ray_started_here

log = logging.getLogger(__name__)

UNIT_POLL_SECONDS = 5.0  # how often completed units get their markers while the job runs
DRAIN_POLL_S = 1.0  # how often the driver looks for draining nodes: Ray Data releases their idle actors, so a
# drained node can leave within seconds of its notice
DRAINED_DEATHS = (3, 4)  # Ray's NodeDeathInfo.Reason AUTOSCALER_DRAIN_PREEMPTED, AUTOSCALER_DRAIN_IDLE (ray.nodes())

# -- stalls -----------------------------------------------------------------------------------------


def unmet_demand(job: Job, lost_node_hint: bool = True) -> str | None:
    """Why the cluster's live nodes cannot run the job's stages now (None when they can)."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    cpus, gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
    res = job.process.resources
    # The pool is elastic (``plan._pool``): one actor and one read task are enough to go on.
    need_cpus = res.cpus + job.read.cpus
    problems = []
    if need_cpus > cpus:
        problems.append(
            f"{need_cpus:g} CPUs (at least 1 actor x {res.cpus:g} + {job.read.cpus:g} for reading), "
            f"the cluster has {cpus:g}"
        )
    if res.gpus > gpus:
        problems.append(f"{res.gpus:g} GPUs (at least 1 actor x {res.gpus:g}), the cluster has {gpus:g}")
    if nodes and not any(n.get("CPU", 0) >= res.cpus and n.get("GPU", 0) >= res.gpus for n in nodes):
        problems.append(f"no live node has {res.cpus:g} CPUs and {res.gpus:g} GPUs for one actor")
    if not problems:
        return None
    hint = "; was a node lost?" if lost_node_hint else ""
    return f"the stages need {'; '.join(problems)} ({len(nodes)} live nodes{hint})"


def check_schedulable(job: Job) -> None:
    """Refuse at once a job that the cluster can never run: a Ray started by this process does not grow.
    On a joined cluster an autoscaler may add nodes: say so and let the stall watchdog decide."""
    why = unmet_demand(job, lost_node_hint=False)
    if why is None:
        return
    remedy = f"give the stages fewer CPUs (e.g. resources.cpus_per_reader=0.5 {job.actor_cpus_key}=0.5)"
    if ray_started_here():
        raise LatentError(f"cannot run on this Ray: {why}. Start it with more CPUs (ray.num_cpus) or {remedy}")
    log.warning(
        "the cluster cannot run the stages yet (%s): waiting for nodes; the job fails after %.0f s without progress",
        why,
        job.stall_timeout_s,
    )


class _Stalled(BaseException):
    """Raised in the job's thread by the watchdog. Not a KeyboardInterrupt: delivering it does not depend on
    the process's SIGINT handler (a server or a test runner may have replaced it), nor on the job running
    in the main thread; a BaseException, so no ``except Exception`` on the way swallows it."""


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in the thread ``thread_id`` at its next Python instruction (Python's own
    ``PyThreadState_SetAsyncExc``); None withdraws one not yet raised."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None
    )


class _Watchdog(threading.Thread):
    """Stops the run (``_Stalled`` in the thread that started it) when no row came for ``timeout`` seconds
    and the stages cannot be scheduled."""

    def __init__(self, job: Job, record: RunRecord | None = None) -> None:
        super().__init__(daemon=True, name="latent-stall-watchdog")
        self.job, self.timeout, self.record = job, job.stall_timeout_s, record
        self.nodes: dict[str, float] | None = None  # live node id -> its CPUs, as last seen
        self.draining: set[str] = set()  # nodes seen draining
        self.job_thread = threading.get_ident()
        self.last_progress = time.monotonic()
        self.reason: str | None = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()  # stop() and the raise exclude each other: nothing raised after stop()

    def stop(self) -> None:
        with self._lock:
            self.stopped.set()
            if self.reason:  # raised but maybe not delivered yet (the job ended meanwhile): withdraw it
                _raise_in_thread(self.job_thread, None)

    def watch_nodes(self) -> None:
        """Say (and record in the run record) when the cluster loses or gains nodes: the pool follows. A lost
        node's record says whether it left drained (a preemption notice, ``ray drain-node``) and Ray's reason."""
        import ray

        table = ray.nodes()
        now = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in table if n["Alive"]}
        dead = {n["NodeID"]: n for n in table if not n["Alive"]}
        before, self.nodes = self.nodes, now
        if before is None:
            return
        for kind, ids in (("node_lost", before.keys() - now.keys()), ("node_joined", now.keys() - before.keys())):
            for node in ids:
                cpus = before.get(node, now.get(node))
                death = dead.get(node, {})
                # drained: seen draining, or Ray says so (a drain past its deadline ends like a SIGTERMed raylet)
                drained = kind == "node_lost" and (node in self.draining or death.get("DeathReason") in DRAINED_DEATHS)
                log.warning(
                    "%s: node %s (%g CPUs) %s; the actor pool %s (%d live nodes)",
                    self.job.name,
                    node[:12],
                    cpus,
                    {"node_joined": "joined", "node_lost": "left after draining" if drained else "lost"}[kind],
                    "shrinks to what is left; rows in flight there are redone" if kind == "node_lost" else "may grow",
                    len(now),
                )
                if self.record is None:
                    continue
                if kind == "node_lost":
                    reason = death.get("DeathReasonMessage") or None
                    self.record.event(kind, node=node, cpus=cpus, live_nodes=len(now), drained=drained, reason=reason)
                else:
                    self.record.event(kind, node=node, cpus=cpus, live_nodes=len(now))

    def watch_drains(self) -> None:
        """Say (and record) when a node starts draining (a preemption notice): Ray Data gives it no new
        batches, its batches in flight finish there, then it leaves (``node_lost``) when idle or at the
        deadline; what is still in flight then is redone."""
        for node, deadline_ms in draining_nodes().items():
            if node in self.draining:
                continue
            self.draining.add(node)
            left = round(deadline_ms / 1000 - time.time(), 1) if deadline_ms else None
            log.warning(
                "%s: node %s is draining (%s): it gets no new batches, its batches in flight finish there",
                self.job.name,
                node[:12],
                "no deadline" if left is None else f"leaves in {left:g} s at the latest",
            )
            if self.record is not None:
                cpus = (self.nodes or {}).get(node)
                self.record.event("node_draining", node=node, cpus=cpus, deadline_in_s=left)

    def run(self) -> None:
        warned = False
        every = min(5.0, max(0.5, self.timeout / 4))  # the node table and the stall check
        look_at = 0.0
        while not self.stopped.wait(min(DRAIN_POLL_S, every)):
            with contextlib.suppress(Exception):  # Ray going away under us: the job's thread reports it
                self.watch_drains()
            if time.monotonic() < look_at:
                continue
            look_at = time.monotonic() + every
            with contextlib.suppress(Exception):
                self.watch_nodes()
            idle = time.monotonic() - self.last_progress
            if idle < self.timeout:
                warned = False
                continue
            try:
                why = unmet_demand(self.job)
            except Exception:  # noqa: BLE001  (Ray going away under us: the job's thread reports it; look again)
                continue
            if why:
                with self._lock:
                    if not self.stopped.is_set():
                        self.reason = f"no progress for {idle:.0f} s and nothing can be scheduled: {why}"
                        _raise_in_thread(self.job_thread, _Stalled)
                return
            if not warned:
                log.warning("no rows for %.0f s; the stages are scheduled and still working", idle)
                warned = True


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
    job: Job, batches: Iterator[pa.Table], total: int | None, record: RunRecord | None = None
) -> tuple[int, int, float]:
    """Consume the processed batches: commits (by rows and by time), progress as rows come (rate and ETA),
    the error fraction, unit markers. Returns (rows, errors, steady pace)."""
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

    watchdog = _Watchdog(job, record)
    if not job.inline:  # in this process nothing waits on a cluster
        watchdog.start()
    try:
        try:
            with _progress(job, total) as bar:
                # a thread pulls the batches: commit windows end on time even while a batch takes minutes
                for batch in ahead(batches, tick=1.0):
                    if batch is None:
                        committed(committer.tick())
                        continue
                    good = batch.column("error").null_count  # rows the stage did not fail
                    seen, failed = seen + good, failed + batch.num_rows - good
                    last = watchdog.last_progress = time.monotonic()
                    first = first or (last, seen + failed)
                    bar.update(batch.num_rows)
                    if failed:
                        bar.set_postfix(errors=failed, refresh=False)
                    check_error_fraction(seen, failed, job.max_error_fraction, output.path, final=False)
                    committed(committer.add(batch))
                    if last - polled > UNIT_POLL_SECONDS:
                        _mark_finished_units(output, by_attempt, marked)
                        polled = last
                committed(committer.flush())
            _mark_finished_units(output, by_attempt, marked)
        finally:
            watchdog.stop()
    except _Stalled:
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
            done = output.done_keys()
            finished = output.done_units()
            units = [u for u in with_ids(job.units) if unit_marker_name(u["unit_id"]) not in finished]
            total = None if job.total_rows is None else max(0, job.total_rows - len(done))
            if job.drop_done is not None:
                units, total = job.drop_done(units, done)
            if finished or len(done):
                print(
                    f"latent {job.name}: resuming: {len(finished):,} units and {len(done):,} rows finished earlier "
                    f"are kept; {len(units):,} units to do",
                    file=sys.stderr,
                )
            rows = errors = 0
            steady = 0.0
            if units and job.inline:
                rows, errors, steady = _execute(job, run_inline(job, units, done if len(done) else None), total)
            elif units:  # nothing left: no plan at all (Ray Data would only say it received 0 inputs)
                check_schedulable(job)
                plan = build_plan(job, units, done if len(done) else None)
                # prefetch_batches=0: with prefetching, each stats block waits for the next one (a shard late).
                batches = plan.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0)
                rows, errors, steady = _execute(job, batches, total, record)
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
