"""`latent knn`: a table of queries x an index -> each query's k nearest neighbours, as Parquet.

``knn_job`` writes the job for the runner (pipeline/runner/): read tasks stream the query table
(vectors, image paths/bytes or texts), an actor pool of Searchers (each maps the index once) answers
a batch at a time, and write tasks commit Parquet shards; the runner resumes a killed run. ``run_knn``
decides everything at the edge, runs the job, and with ``threshold`` turns the neighbours into
near-duplicate groups.
The stages live beside it: search/queries.py (listing and reading the queries), search/neighbours.py (the
searcher actor, the neighbours shards, the groups). Output layout and schemas: docs/search.md.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from dataclasses import asdict, dataclass, replace
from functools import partial

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Device, KnnCommandConfig, Precision
from pipeline.encode.model import ModelSpec
from pipeline.errors import LatentError
from pipeline.index.store.directory import IndexDirectory
from pipeline.io.publish import refuse_output_inside_inputs
from pipeline.io.shards import ERRORS_DIR, commit_table, filesystem, list_shards
from pipeline.runner import (
    ActorStage,
    Job,
    JobResult,
    ReadStage,
    WriteStage,
    actor_resources,
    completed_summary,
    run_job,
)
from pipeline.runner.output import JobOutput
from pipeline.runtime import init_ray, job_gpus, resolve_device, resolve_precision, runs_inline
from pipeline.search.limits import check_k
from pipeline.search.neighbours import GROUPS_DIR, NEIGHBORS_DIR, KnnBatches, near_duplicate_groups, write_neighbours
from pipeline.search.queries import QueryTable, check_query_wheres, list_queries, read_queries
from pipeline.search.query_model import resolve_query_model

log = logging.getLogger(__name__)

KNN_ERRORS_SCHEMA = pa.schema([pa.field("query_id", pa.string()), pa.field("error", pa.string())])
READER_MEMORY = 512 * 1024**2  # a read task: pyarrow, one batch of queries (image bytes included)


def knn_output(cfg: KnnCommandConfig) -> JobOutput:
    """The knn output: neighbours and errors keyed by query id (docs/search.md)."""
    return JobOutput(cfg.output.path, data_dirs=(NEIGHBORS_DIR, ERRORS_DIR), key="query_id")


def knn_job(
    queries: QueryTable,
    spec: ModelSpec | None,
    device: str,
    cfg: KnnCommandConfig,
    output: JobOutput | None = None,
    inline: bool = False,
) -> Job:
    """The knn job for the runner: read tasks -> searcher actors (each maps the index once) -> write tasks
    (``inline``: the same stages in this process, without Ray)."""
    res = cfg.resources
    return Job(
        name="knn",
        output=output or knn_output(cfg),
        config=cfg,
        units=queries.units,
        total_rows=queries.total_rows,
        # Memory declared so that Ray Data keeps reading in its own tasks: it fuses a task stage into the
        # next actor stage when their resources are equal (ray#54433), which would serialise read and search.
        read=ReadStage(partial(read_queries, rows=cfg.batch_size), cpus=res.cpus_per_reader, memory=READER_MEMORY),
        process=ActorStage(
            KnnBatches,
            {
                "index_path": os.path.abspath(cfg.index.path),
                "spec": spec,
                "k": cfg.k,
                "kind": queries.kind,
                "where": cfg.where,
            },  # fmt: skip
            actor_resources(res.actors, res.cpus_per_actor, res.gpus_per_actor, device, inline),
            batch_size=cfg.batch_size,
        ),
        write=WriteStage(
            partial(write_neighbours, output=cfg.output.path),
            rows=cfg.output.rows_per_shard,
            errors_schema=KNN_ERRORS_SCHEMA,
        ),
        stall_timeout_s=cfg.ray.stall_timeout_s,
        commit_every_s=cfg.output.commit_every_s,
        progress=cfg.progress,
        row_label="queries",
        inline=inline,
    )


# -- the job -------------------------------------------------------------------------------------------


@dataclass
class KnnSummary:
    output: str
    queries: int  # queries answered (rows in neighbors/)
    errors: int  # queries that could not be answered (rows in _errors/)
    k: int
    kind: str
    wall_seconds: float
    queries_per_second: float
    groups: int | None = None  # near-duplicate groups (with threshold)
    duplicates: int | None = None  # ids in those groups beyond one per group: what dedup would drop
    threshold: float | None = None
    already_complete: bool = False

    def render(self) -> str:
        if self.already_complete:
            return f"latent knn: {self.output} is already complete ({self.queries:,} queries); nothing to do"
        lines = [
            f"latent knn: done in {self.wall_seconds:.1f} s",
            f"  queries      {self.queries:,} {self.kind} queries, k={self.k}"
            + (f"; {self.errors:,} failed, listed in {self.output}/{ERRORS_DIR}" if self.errors else ""),
            f"  throughput   {self.queries_per_second:,.1f} queries/s",
            f"  neighbours   {self.output}/{NEIGHBORS_DIR}",
        ]
        if self.groups is not None:
            lines.append(
                f"  dedup        {self.groups:,} groups of near-duplicates (cosine >= {self.threshold}), "
                f"{self.duplicates:,} redundant items: {self.output}/{GROUPS_DIR}"
            )
        return "\n".join(lines)


def _check_config(cfg: KnnCommandConfig, directory: IndexDirectory) -> None:
    # 1..MAX_K, then bounded by the index size: every result array is queries x min(k, ntotal)
    cfg.k = check_k(cfg.k, directory.info.ntotal)
    if cfg.batch_size <= 0:
        raise LatentError(f"batch_size={cfg.batch_size}: must be a positive integer")
    if cfg.where is not None:  # a bad predicate stops the job here, before any worker starts
        from pipeline.search.columns import ItemColumns

        ItemColumns(directory).compile(cfg.where)
    if cfg.threshold is not None:
        if not -1.0 <= cfg.threshold <= 1.0:
            raise LatentError(f"threshold={cfg.threshold}: a cosine similarity, in [-1, 1]")
        if directory.info.metric != "ip" or not directory.info.normalized:
            raise LatentError(
                f"threshold= is a cosine similarity, but the index at {cfg.index.path} is not a cosine index "
                f"(metric {directory.info.metric}, normalized {directory.info.normalized})"
            )


def run_knn(cfg: KnnCommandConfig) -> KnnSummary:
    """Search ``cfg.index.path`` for every query of ``cfg.input.path``; write neighbours (and groups).

    A killed run, rerun with the same command, keeps what it committed and answers each query once."""
    refuse_output_inside_inputs(
        {"output.path": cfg.output.path}, {"input.path": cfg.input.path, "index.path": cfg.index.path}
    )
    directory = IndexDirectory.open(cfg.index.path)
    _check_config(cfg, directory)
    output = knn_output(cfg)
    recorded = completed_summary(output)
    if recorded is not None:
        summary = KnnSummary(**{**recorded, "already_complete": True})
        print(summary.render())
        return summary
    queries = list_queries(cfg)
    if queries.where_column is not None:  # every row's predicate, checked before anything is written
        from pipeline.search.columns import ItemColumns

        check_query_wheres(queries, cfg.where, ItemColumns(directory).compile)
    output.prepare()
    with output.lock():  # a second writer is refused before Ray starts
        inline = runs_inline(cfg.ray, queries.total_rows)
        if not inline:
            init_ray(cfg.ray)
        spec, device = None, "cpu"
        if queries.kind != "vector":  # checked once here: a mismatched model fails before any actor starts
            gpus = job_gpus(cfg.ray, inline)
            device = resolve_device(cfg.model.device, gpus)
            model = replace(
                cfg.model, device=Device(device), precision=Precision(resolve_precision(cfg.model.precision, device))
            )
            spec = resolve_query_model(directory.info, model, gpus=gpus)
        job = knn_job(queries, spec, device, cfg, output, inline=inline)
        summary = KnnSummary(**run_job(job, partial(_finish, cfg, queries)))
    print(summary.render())
    return summary


def _finish(cfg: KnnCommandConfig, queries: QueryTable, result: JobResult) -> dict:
    """The summary over the whole output, and near-duplicate groups with a threshold."""
    fs, root = filesystem(cfg.output.path)
    started = time.perf_counter()
    answered = _count_rows(posixpath.join(root, NEIGHBORS_DIR))
    summary = KnnSummary(
        output=cfg.output.path,
        queries=answered,
        errors=_count_rows(posixpath.join(root, ERRORS_DIR)),
        k=cfg.k,
        kind=queries.kind,
        wall_seconds=result.wall_seconds,
        queries_per_second=result.rows_per_second,
    )
    fs.makedirs(posixpath.join(root, NEIGHBORS_DIR), exist_ok=True)
    if cfg.threshold is not None:
        groups_dir = posixpath.join(root, GROUPS_DIR)
        if fs.exists(groups_dir):  # groups of an earlier run that died while writing them
            fs.rm(groups_dir, recursive=True)
        groups = near_duplicate_groups(posixpath.join(root, NEIGHBORS_DIR), cfg.threshold)
        fs.makedirs(groups_dir, exist_ok=True)
        for start in range(0, groups.num_rows, cfg.output.rows_per_shard):
            commit_table(groups.slice(start, cfg.output.rows_per_shard), groups_dir)
        summary.groups = groups.num_rows
        summary.duplicates = int(pc.sum(groups.column("size")).as_py() or 0) - groups.num_rows
        summary.threshold = cfg.threshold
        summary.wall_seconds = round(result.wall_seconds + time.perf_counter() - started, 3)
    return asdict(summary)


def _count_rows(directory: str) -> int:
    total = 0
    for path in list_shards(directory):
        fs, local = filesystem(path)
        with fs.open(local, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
