"""The Ray Data plan of a runner job: read tasks -> the actor pool -> the driver. The one place plans are built.

The job's stages are wrapped so that every row carries the unit (and read attempt) it came from; the
driver commits the processed rows (``commit.Committer``: by rows and by time) and marks units done.
"""

from __future__ import annotations

import ctypes
import json
import posixpath
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from functools import partial

import pyarrow as pa

from pipeline.io.shards import filesystem
from pipeline.runner.job import ActorResources, Job
from pipeline.runner.output import READ_DIR, unit_marker_name
from pipeline.runtime import node_cpus

UNIT_COLUMN = "_latent_unit"  # which unit (and read attempt) a row came from: "<unit marker>.<attempt>"


def _read_units(units: pa.Table, fn: Callable, done: pa.Array | None, state_dir: str) -> Iterator[pa.Table]:
    fs, _ = filesystem(state_dir)
    attempts = posixpath.join(state_dir, "units", READ_DIR)
    fs.makedirs(attempts, exist_ok=True)
    for text in units.column("unit").to_pylist():
        unit = json.loads(text)
        tag = f"{unit_marker_name(unit['unit_id'])}.{uuid.uuid4().hex[:12]}"  # this read attempt
        emitted = 0
        for records in fn(unit, done):
            if records.num_rows:
                emitted += records.num_rows
                yield records.append_column(UNIT_COLUMN, pa.array([tag] * records.num_rows, pa.string()))
        fs.pipe_file(posixpath.join(attempts, tag), str(emitted).encode())


class _StageActor:
    def __init__(self, stage: type, kwargs: dict, threads: int | None, node_threads: bool) -> None:
        self.fn = stage(**kwargs, threads=node_cpus() if node_threads else threads)

    def __call__(self, batch: pa.Table) -> pa.Table:
        tags = batch.column(UNIT_COLUMN)
        out = self.fn(batch.drop_columns([UNIT_COLUMN]))
        if out.num_rows != batch.num_rows:
            raise RuntimeError(f"{type(self.fn).__name__} returned {out.num_rows} rows for {batch.num_rows}")
        return out.append_column(UNIT_COLUMN, tags)


def _pool(res: ActorResources):
    """An elastic actor pool: ``res.actors`` at first, down to one, up to ``res.most``. Ray Data (2.60) adds
    actors while the pool is busy and its budget has room, and releases idle ones; a fixed-size pool would
    wait forever for a lost node's actor. Ray restarts a lost actor outside that budget, where it may starve
    the read tasks: the watchdog then restarts the stages with a pool that fits (``watchdog.py``)."""
    from ray.data import ActorPoolStrategy

    if res.most == 1:
        return ActorPoolStrategy(size=1)
    return ActorPoolStrategy(min_size=1, max_size=res.most, initial_size=res.actors)


def build_plan(job: Job, units: list[dict] | None = None, done: pa.Array | None = None):
    """The Ray Data plan: read tasks -> the actor pool; its processed rows (with ``UNIT_COLUMN``) stream to
    the driver, which commits them. The one place plans are built."""
    import ray
    from ray.data import DataContext, ExecutionResources

    context = DataContext.get_current()
    if job.block_bytes:
        context.target_max_block_size = job.block_bytes
    if job.object_store_budget:
        # Reading is cheaper than the actor's work: unbounded, reads would buffer the input in the object store.
        context.execution_options.resource_limits = ExecutionResources.for_limits(
            object_store_memory=job.object_store_budget
        )
    stage = job.process
    units = with_ids(job.units) if units is None else units
    items = [{"unit": json.dumps(u)} for u in units]
    records = ray.data.from_items(items, override_num_blocks=max(1, len(items))).map_batches(
        partial(_read_units, fn=job.read.fn, done=done, state_dir=job.output.state_dir),
        batch_size=1,
        batch_format="pyarrow",
        num_cpus=job.read.cpus,
        memory=job.read.memory,
    )
    processed = records.map_batches(
        _StageActor,
        fn_constructor_kwargs={
            "stage": stage.cls,
            "kwargs": stage.kwargs,
            "threads": stage.resources.threads,
            "node_threads": stage.resources.node_threads,
        },
        batch_size=stage.batch_size,
        batch_format="pyarrow",
        compute=_pool(stage.resources),
        num_gpus=stage.resources.gpus or None,
        num_cpus=stage.resources.cpus,
    )
    return processed


def stop_plan(plan) -> None:
    """Shut a running plan down now: its actors killed (their CPUs released), its tasks cancelled. Closing
    its batch iterator is not enough: the iterator's thread may wait for a block that never comes (a pool
    starving its readers). Ray Data (2.60) keeps a dataset's running executor on ``_current_executor``."""
    executor = getattr(plan, "_current_executor", None)
    if executor is not None:
        executor.shutdown(force=True)


def run_inline(job: Job, units: list[dict], done: pa.Array | None = None) -> Iterator[pa.Table]:
    """The plan's stages run in this process, without Ray: each unit read, cut into the actor's batches and
    processed by one instance of the stage. Yields the processed batches, as ``build_plan``'s plan streams
    them, so commits, progress, unit markers and resume are the runner's own. For small jobs, where Ray's
    start-up (worker processes, each importing the model's libraries) would take longer than the work."""
    stage = job.process
    actor = _StageActor(stage.cls, stage.kwargs, stage.resources.threads, stage.resources.node_threads)
    read = partial(_read_units, fn=job.read.fn, done=done, state_dir=job.output.state_dir)
    records = (r for unit in with_ids(units) for r in read(pa.table({"unit": [json.dumps(unit)]})))
    for batch in ahead(records):  # the next batch is read and decoded while the stage works on this one
        for start in range(0, batch.num_rows, stage.batch_size):
            yield actor(batch.slice(start, stage.batch_size))


class _Stop(BaseException):
    """Raised in ``ahead``'s producer thread when its consumer has stopped (a BaseException: nothing swallows it)."""


def ahead(items: Iterator[pa.Table], depth: int = 2, tick: float | None = None) -> Iterator[pa.Table | None]:
    """``items``, produced by a thread up to ``depth`` ahead of the consumer (decoding and torch release
    the GIL: reading overlaps the stage, as Ray's read tasks do). The thread's exception is re-raised here.
    ``tick``: also yield None after each ``tick`` seconds without an item (the consumer's clock)."""
    ahead: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ahead.put((item, None), timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ahead.put((end, None))
        except _Stop:
            return
        except BaseException as err:  # noqa: BLE001  (handed to the consumer, raised there)
            ahead.put((end, err))
        finally:
            close = getattr(items, "close", None)
            if close is not None:  # a Ray Data iterator shuts its execution down: no stages left holding the CPUs
                close()

    thread = threading.Thread(target=produce, daemon=True, name="latent-inline-read")
    thread.start()
    try:
        while True:
            try:
                item, err = ahead.get(timeout=tick)
            except queue.Empty:
                yield None
                continue
            if err is not None:
                raise err
            if item is end:
                return
            yield item
    finally:
        stop.set()
        if thread.is_alive():  # the consumer stopped early (an error, Ctrl-C): stop the producer, even mid-wait
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(_Stop))


def with_ids(units: list[dict]) -> list[dict]:
    return [u if "unit_id" in u else {**u, "unit_id": json.dumps(u, sort_keys=True)} for u in units]
