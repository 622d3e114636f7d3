"""`latent knn`: a table of queries x an index -> each query's k nearest neighbours, as Parquet.

``knn_job`` writes the job for the runner (pipeline/runner/): read tasks stream the query table
(vectors, image paths/bytes or texts), an actor pool of Searchers (each maps the index once) answers
a batch at a time, and write tasks commit Parquet shards; the runner resumes a killed run. ``run_knn``
decides everything at the edge, runs the job, and with ``threshold`` turns the neighbours into
near-duplicate groups.
Output layout and schemas: docs/search.md.
"""

from __future__ import annotations

import logging
import os
import posixpath
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Device, InputFormat, KnnCommandConfig, Precision, QueryKind
from pipeline.encode.model import ModelSpec
from pipeline.errors import LatentError, describe_error
from pipeline.index.read import embedding_columns
from pipeline.index.store import IndexDirectory
from pipeline.io.output import JobOutput
from pipeline.io.shards import ERRORS_DIR, arrow_to_vectors, commit_table, filesystem
from pipeline.io.tables import (
    ID_COLUMN_GUESSES,
    IMAGE_COLUMN_GUESSES,
    TEXT_COLUMN_GUESSES,
    TableBatch,
    check_image_column,
    list_tables,
    read_images,
    table_batches,
    table_units,
)
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
from pipeline.runtime import cluster_gpus, init_ray, resolve_device, resolve_precision
from pipeline.search.limits import check_k
from pipeline.search.searcher import QueryError, Searcher, decode_query_image, resolve_query_model

log = logging.getLogger(__name__)

NEIGHBORS_DIR = "neighbors"
GROUPS_DIR = "groups"
NEIGHBORS_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("neighbor_ids", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float32())),
    ]
)
GROUPS_SCHEMA = pa.schema(
    [
        pa.field("group_id", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("member_ids", pa.list_(pa.string())),
    ]
)
KNN_ERRORS_SCHEMA = pa.schema([pa.field("query_id", pa.string()), pa.field("error", pa.string())])
READER_MEMORY = 512 * 1024**2  # a read task: pyarrow, one batch of queries (image bytes included)


# -- the queries ------------------------------------------------------------------------------------


@dataclass
class QueryTable:
    """A listed query table: its read units and which column holds the queries."""

    root: str
    format: InputFormat
    kind: str  # "vector" | "image" | "text"
    column: str
    id_column: str | None
    units: list[dict[str, Any]]
    total_rows: int | None  # known up front for Parquet


def _column_kind(field: pa.Field) -> str:
    t = field.type
    if (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)) and pa.types.is_floating(
        t.value_type
    ):
        return "vector"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or field.name in IMAGE_COLUMN_GUESSES:
        return "image"
    return "text"


def _choose_column(schema: pa.Schema, kind: QueryKind, column: str | None) -> tuple[str, str]:
    """(kind, column) of the queries, from the config and the table's columns."""
    names = schema.names
    if column is not None:
        if column not in names:
            raise LatentError(f"input.column={column}: no such column (columns: {', '.join(names)})")
        found = _column_kind(schema.field(column)) if kind == QueryKind.auto else kind.value
        if found == "vector" and _column_kind(schema.field(column)) != "vector":
            raise LatentError(f"input.column={column} is {schema.field(column).type}, not a list of floats")
        return found, column
    vectors = embedding_columns(schema)
    images = [c for c in IMAGE_COLUMN_GUESSES if c in names]
    texts = [c for c in TEXT_COLUMN_GUESSES if c in names]
    candidates = {"vector": vectors, "image": images, "text": texts}
    order = ["vector", "image", "text"] if kind == QueryKind.auto else [kind.value]
    for name in order:
        if len(candidates[name]) > 1 and name == "vector":
            raise LatentError(f"the input has several embedding columns ({', '.join(vectors)}): set input.column")
        if candidates[name]:
            return name, candidates[name][0]
    wanted = "embedding, image or text column" if kind == QueryKind.auto else f"{kind.value} column"
    raise LatentError(f"input.path: found no {wanted} (columns: {', '.join(names)}); set input.column")


def list_queries(cfg: KnnCommandConfig) -> QueryTable:
    """List the query table at ``cfg.input.path`` and plan its read units (one per row group or file)."""
    if cfg.input.format not in (InputFormat.auto, InputFormat.parquet, InputFormat.csv, InputFormat.jsonl):
        raise LatentError(f"input.format={cfg.input.format.value}: knn reads parquet, csv or jsonl tables")
    tables = list_tables(cfg.input.path, cfg.input.format)
    schema = tables.schema
    kind, column = _choose_column(schema, cfg.input.kind, cfg.input.column)
    if kind == "image":
        check_image_column(schema, column, "input.column")
    id_column = cfg.input.id_column or next((c for c in ID_COLUMN_GUESSES if c in schema.names), None)
    if id_column is not None and id_column not in schema.names:
        raise LatentError(f"input.id_column={id_column}: no such column (columns: {', '.join(schema.names)})")
    units, total = table_units(tables.fs, tables.paths, tables.format)
    for unit in units:
        unit.update(root=tables.root, column=column, id_column=id_column, query_kind=kind)
    return QueryTable(tables.root, tables.format, kind, column, id_column, units, total)


QUERY_TYPES = {"vector": pa.list_(pa.float32()), "image": pa.binary(), "text": pa.string()}


def _records(part: TableBatch, unit: dict) -> pa.Table:
    """Read-task output: query_id, query (vector list, image bytes or text) and error (null when usable)."""
    batch = part.batch
    n = batch.num_rows
    rel = posixpath.relpath(unit["path"], unit["root"])
    kind = unit["query_kind"]
    if n:
        if unit["id_column"]:
            ids = pc.cast(batch.column(unit["id_column"]), pa.string())
        else:
            ids = pa.array([f"{rel}:{row}" for row in part.rows.tolist()], pa.string())
        column = batch.column(unit["column"])
        if kind == "image":
            images, errors, _ = read_images(column.to_pylist(), unit["path"])
            query, error = pa.array(images, pa.binary()), pa.array(errors, pa.string())
        elif kind == "text":
            query = pc.cast(column, pa.string())
            blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(query), ""), True)
            error = pc.if_else(blank, pa.scalar("empty text", pa.string()), pa.nulls(n, pa.string()))
        else:
            fixed = pa.types.is_fixed_size_list(column.type)
            query = column if fixed else pc.cast(column, QUERY_TYPES["vector"])
            error = pc.if_else(pc.is_null(column), pa.scalar("null vector", pa.string()), pa.nulls(n, pa.string()))
        records = pa.table({"query_id": ids, "query": query, "error": error})
    else:
        records = pa.table(
            {
                "query_id": pa.array([], pa.string()),
                "query": pa.array([], QUERY_TYPES[kind]),
                "error": pa.array([], pa.string()),
            }
        )
    if not part.bad:
        return records
    bad = pa.table(
        {
            "query_id": pa.array([f"{rel}:{row}" for row, _ in part.bad], pa.string()),
            "query": pa.nulls(len(part.bad), records.schema.field("query").type),
            "error": pa.array([why for _, why in part.bad], pa.string()),
        }
    )
    return pa.concat_tables([records, bad])


def read_queries(unit: dict, done: pa.Array | None, rows: int) -> Iterator[pa.Table]:
    """Stage 1 (CPU task): stream a read unit's rows as query records, ``rows`` at a time, without ``done`` ids."""
    columns = [c for c in (unit["column"], unit["id_column"]) if c]
    offset = unit["offset"]
    try:
        for part in table_batches(unit, columns, rows):
            offset = int(part.rows[-1]) + 1 if len(part.rows) else offset
            records = _records(part, unit)
            if done is not None:
                records = records.filter(pc.invert(pc.is_in(records.column("query_id"), value_set=done)))
            yield records
    except (pa.ArrowInvalid, OSError) as err:  # a broken file: one error row, the job goes on
        rel = posixpath.relpath(unit["path"], unit["root"])
        yield pa.table(
            {
                "query_id": [f"{rel}#unreadable@{offset}"],
                "query": pa.nulls(1, QUERY_TYPES[unit["query_kind"]]),
                "error": [f"unreadable table from row {offset}: {describe_error(err)}"],
            }
        )


# -- the searcher actor ---------------------------------------------------------------------------------


def neighbours_to_arrow(ids: np.ndarray, scores: np.ndarray) -> tuple[pa.ListArray, pa.ListArray]:
    """(n, k) ids/scores with None/NaN for missing hits -> list columns holding the hits only."""
    valid = ids != None  # noqa: E711  (element-wise on an object array)
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
    neighbor_ids = pa.ListArray.from_arrays(offsets, pa.array(ids[valid].tolist(), pa.string()))
    hit_scores = pa.ListArray.from_arrays(offsets, pa.array(scores[valid].astype(np.float32), pa.float32()))
    return neighbor_ids, hit_scores


class KnnBatches:
    """Ray Data actor: query records in, neighbour rows (and error rows) out. Opens the index once."""

    def __init__(self, index_path: str, spec: ModelSpec | None, k: int, kind: str, threads: int | None) -> None:
        if threads:
            import faiss
            import torch

            faiss.omp_set_num_threads(threads)
            torch.set_num_threads(threads)
        self.searcher = Searcher.open(index_path, query_model=spec)
        self.k, self.kind = k, kind

    def _queries(self, batch: pa.Table, ok: np.ndarray, errors: list[str | None]) -> dict[str, Any]:
        column = batch.column("query")
        if self.kind == "vector":
            vectors = np.zeros((batch.num_rows, self.searcher.dim), np.float32)
            good = column.filter(pa.array(ok))
            if len(good):
                found = arrow_to_vectors(good)
                if found.shape[1] != self.searcher.dim:
                    raise LatentError(f"query vectors are {found.shape[1]}-d, the index holds {self.searcher.dim}-d")
                vectors[ok] = found
            norms = np.linalg.norm(vectors, axis=1)
            for i in np.flatnonzero(ok & ~(np.isfinite(norms) & (norms > 0))):
                ok[i], errors[i] = False, "zero, NaN or infinite vector"
            return {"vectors": vectors[ok]}
        values = column.to_pylist()
        if self.kind == "text":
            return {"texts": [values[i] for i in np.flatnonzero(ok)]}
        images = []
        for i in np.flatnonzero(ok):
            try:
                images.append(decode_query_image(values[i]))
            except QueryError as err:
                ok[i], errors[i] = False, str(err).replace("images[0]", "image")
        return {"images": images}

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column("error").to_pylist()
        ok = np.array([e is None for e in errors], dtype=bool)
        query = self._queries(batch, ok, errors)
        n = batch.num_rows
        ids = np.full((n, self.k), None, dtype=object)
        scores = np.full((n, self.k), np.nan, dtype=np.float32)
        if ok.any():
            result = self.searcher.search(**query, k=self.k, with_items=False)
            ids[ok], scores[ok] = result.ids, result.scores
        neighbor_ids, hit_scores = neighbours_to_arrow(ids, scores)
        return pa.table(
            {
                "query_id": batch.column("query_id"),
                "neighbor_ids": neighbor_ids,
                "scores": hit_scores,
                "error": pa.array(errors, pa.string()),
            }
        )


def write_neighbours(good: pa.Table, output: str) -> None:
    """Stage 3 (task): commit answered queries as a neighbours shard (the runner records failed ones)."""
    commit_table(good.select(NEIGHBORS_SCHEMA.names).cast(NEIGHBORS_SCHEMA), posixpath.join(output, NEIGHBORS_DIR))


def knn_output(cfg: KnnCommandConfig) -> JobOutput:
    """The knn output: neighbours and errors keyed by query id (docs/search.md)."""
    return JobOutput(cfg.output.path, data_dirs=(NEIGHBORS_DIR, ERRORS_DIR), key="query_id")


def knn_job(
    queries: QueryTable, spec: ModelSpec | None, device: str, cfg: KnnCommandConfig, output: JobOutput | None = None
) -> Job:
    """The knn job for the runner: read tasks -> searcher actors (each maps the index once) -> write tasks."""
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
            {"index_path": os.path.abspath(cfg.index.path), "spec": spec, "k": cfg.k, "kind": queries.kind},
            actor_resources(res.actors, res.cpus_per_actor, res.gpus_per_actor, device),
            batch_size=cfg.batch_size,
        ),
        write=WriteStage(
            partial(write_neighbours, output=cfg.output.path),
            rows=cfg.output.rows_per_shard,
            errors_schema=KNN_ERRORS_SCHEMA,
        ),
        stall_timeout_s=cfg.ray.stall_timeout_s,
        progress=cfg.progress,
        row_label="queries",
    )


# -- near-duplicate groups ---------------------------------------------------------------------------


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the graph with edges (a[i], b[i]) on n nodes: each node's smallest node."""
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]  # pointer jumping: follow to the root in O(log) rounds
        if np.array_equal(labels, before):
            return labels


def near_duplicate_groups(neighbors: str, threshold: float) -> pa.Table:
    """Groups of ids linked by neighbour pairs scoring >= ``threshold`` (GROUPS_SCHEMA), read shard by shard.

    Only the pairs are held in memory. Groups are ordered by their smallest member id; members sorted."""
    from pipeline.io.shards import list_shards

    left, right = [], []
    for path in list_shards(neighbors):
        fs, local = filesystem(path)
        with fs.open(local, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=NEIGHBORS_SCHEMA.names):
                flat_ids = pc.list_flatten(batch.column("neighbor_ids"))
                flat_scores = pc.list_flatten(batch.column("scores"))
                queries = batch.column("query_id").take(pc.list_parent_indices(batch.column("neighbor_ids")))
                keep = pc.and_(pc.greater_equal(flat_scores, threshold), pc.not_equal(flat_ids, queries))
                left.append(queries.filter(keep))
                right.append(flat_ids.filter(keep))
    a = pa.chunked_array(left, pa.string()).combine_chunks() if left else pa.array([], pa.string())
    b = pa.chunked_array(right, pa.string()).combine_chunks() if right else pa.array([], pa.string())
    if len(a) == 0:
        return GROUPS_SCHEMA.empty_table()
    nodes = pc.unique(pa.concat_arrays([a, b])).sort()  # sorted: a component's smallest node is its smallest id
    ia = pc.index_in(a, value_set=nodes).to_numpy()
    ib = pc.index_in(b, value_set=nodes).to_numpy()
    roots = _components(ia, ib, len(nodes))
    order = np.argsort(roots, kind="stable")  # by root, then by node: members come out sorted
    _, starts, sizes = np.unique(roots[order], return_index=True, return_counts=True)
    offsets = pa.array(np.concatenate([starts, [len(order)]]).astype(np.int32))
    members = pa.ListArray.from_arrays(offsets, nodes.take(pa.array(order)))
    return pa.table(
        {"group_id": np.arange(len(sizes), dtype=np.int64), "size": sizes.astype(np.int64), "member_ids": members},
        schema=GROUPS_SCHEMA,
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
    directory = IndexDirectory.open(cfg.index.path)
    _check_config(cfg, directory)
    output = knn_output(cfg)
    recorded = completed_summary(output)
    if recorded is not None:
        summary = KnnSummary(**{**recorded, "already_complete": True})
        print(summary.render())
        return summary
    queries = list_queries(cfg)
    output.prepare()
    with output.lock():  # a second writer is refused before Ray starts
        init_ray(cfg.ray)
        spec, device = None, "cpu"
        if queries.kind != "vector":  # checked once here: a mismatched model fails before any actor starts
            device = resolve_device(cfg.model.device, cluster_gpus())
            model = replace(
                cfg.model, device=Device(device), precision=Precision(resolve_precision(cfg.model.precision, device))
            )
            spec = resolve_query_model(directory.info, model, gpus=cluster_gpus())
        summary = KnnSummary(**run_job(knn_job(queries, spec, device, cfg, output), partial(_finish, cfg, queries)))
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
    from pipeline.io.shards import list_shards

    total = 0
    for path in list_shards(directory):
        fs, local = filesystem(path)
        with fs.open(local, "rb") as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
