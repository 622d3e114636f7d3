"""A runner job: its units, its stages and their resources, its result (see pipeline/runner/__init__.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from pipeline.errors import LatentError
from pipeline.io.shards import ERRORS_DIR
from pipeline.runner.output import JobOutput
from pipeline.runtime import cluster_cpu_nodes, cluster_gpus

GPU_GROWTH = 4  # a GPU pool may grow to this many times its start-up size as nodes join
MIN_ROWS_FOR_ERROR_CHECK = 200  # judge the error fraction early only once a sample this large is in


class JobInterrupted(LatentError):
    exit_code = 130


# -- a job ------------------------------------------------------------------------------------------


@dataclass
class ActorResources:
    """One actor-pool stage's resources: decided once, here, from the cluster (``actor_resources``).

    The pool is elastic (Ray Data's autoscaling actor pool): it starts with ``actors``, is restarted smaller
    when the live nodes no longer hold it beside a read task (``watchdog.py``) and grows back up to
    ``max_actors`` when nodes join."""

    actors: int
    cpus: float
    gpus: float
    threads: int | None  # torch/FAISS threads of an actor; None: the library's default (GPU actors)
    node_threads: bool = False  # CPU actors: as many threads as the node the actor lands on has CPUs
    max_actors: int = 0  # the most the pool grows to (0: ``actors``)

    @property
    def most(self) -> int:
        return max(self.actors, self.max_actors)


def actor_resources(
    actors: int | None, cpus: float | None, gpus_per_actor: float, device: str, inline: bool = False
) -> ActorResources:
    """Resources of an actor pool on ``device``; nulls derived from the cluster.

    CUDA: one actor per ``gpus_per_actor`` of the cluster's GPUs, growing up to ``GPU_GROWTH`` times
    that as GPU nodes join (each actor holds its GPUs: Ray Data starts only what the cluster can hold).
    CPU: one actor per node with CPUs to spare; it reserves one CPU (or ``cpus``) but runs on all of its
    node's cores unless ``cpus`` is set (read tasks are short and interleave, so the cores stay busy), so
    the pool grows back to its start-up size but not beyond (two such actors on one node would fight for
    its cores). ``actors`` given: that many at most. ``inline`` (no Ray: ``Job.inline``): one "actor",
    in this process."""
    if device == "cuda":
        count = 1 if inline else actors or max(1, int(cluster_gpus() // gpus_per_actor))
        most = count if inline or actors else count * GPU_GROWTH
        return ActorResources(count, cpus or 1.0, gpus_per_actor, None, max_actors=most)
    threads = max(1, round(cpus)) if cpus else None  # a fractional reservation still runs one thread
    count = 1 if inline else actors or cluster_cpu_nodes()
    return ActorResources(count, cpus or 1.0, 0.0, threads, node_threads=threads is None, max_actors=count)


@dataclass
class ReadStage:
    """``fn(unit, done)`` -> Arrow tables of records (CPU tasks); ``done``: keys to skip, or None."""

    fn: Callable[[dict, pa.Array | None], Iterator[pa.Table]]
    cpus: float = 1.0
    memory: int | None = None  # bytes a read task holds; declared, it also keeps reads out of the actor


@dataclass
class ActorStage:
    """``cls(**kwargs, threads=...)`` once per actor, then called on batches (same number of rows out)."""

    cls: type
    kwargs: dict[str, Any]
    resources: ActorResources
    batch_size: int


@dataclass
class WriteStage:
    """``fn(good_rows)`` commits rows whose ``error`` is null; failed rows go to ``<output>/_errors``."""

    fn: Callable[[pa.Table], Any]
    rows: int  # rows per call at most: a shard (fewer when a commit window ends first)
    errors_schema: pa.Schema


@dataclass
class Job:
    name: str  # the command: names the progress bar and messages
    output: JobOutput
    config: Any  # recorded in the run record
    units: list[dict[str, Any]]  # JSON-able; "unit_id" (stable across runs) is added when missing
    read: ReadStage
    process: ActorStage
    write: WriteStage
    total_rows: int | None = None  # rows of all units, when known up front
    drop_done: Callable[[list[dict], pa.Array], tuple[list[dict], int | None]] | None = None  # units known done early
    max_error_fraction: float | None = None
    object_store_budget: int | None = None  # bytes in flight across stages (None: Ray Data's default)
    block_bytes: int | None = None  # Ray Data's block size (None: its default)
    stall_timeout_s: float = 600.0
    commit_every_s: float | None = 60.0  # commit at least this often (``commit.Committer``); None: by rows only
    progress: bool = True
    row_label: str = "rows"
    actor_cpus_key: str = "resources.cpus_per_actor"  # the config key of the actors' CPUs, for messages
    inline: bool = False  # run the stages in this process, without Ray (a small job: no start-up; ``run_inline``)


@dataclass
class JobResult:
    rows: int  # rows committed this run (not errors)
    errors: int  # rows recorded as errors this run
    wall_seconds: float
    rows_per_second: float  # rows and errors over the whole wall time
    steady_rows_per_second: float  # from the first processed batch to the last: the pipeline's pace
    extra: dict[str, Any] = field(default_factory=dict)


def check_error_fraction(rows: int, errors: int, limit: float | None, output: str, final: bool) -> None:
    seen = rows + errors
    if limit is not None and seen and (final or seen >= MIN_ROWS_FOR_ERROR_CHECK) and errors / seen > limit:
        raise LatentError(
            f"{errors:,} of {seen:,} rows failed ({errors / seen:.1%}), more than max_error_fraction={limit}; "
            f"see {output}/{ERRORS_DIR}. Fix the input (or raise max_error_fraction) and rerun: "
            f"finished shards are kept."
        )


def completed_summary(output: JobOutput) -> dict | None:
    """The recorded summary of a finished output (None if unfinished): checked before anything starts."""
    return output.recorded_summary() if output.complete else None
