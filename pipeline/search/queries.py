"""`latent knn`'s queries: list a query table (which column, which ids, its read units) and read it.

``read_queries`` is the job's first stage (a CPU task): a read unit's rows as query records, the query
(a vector, image bytes or a text) and an error where the row is unusable. Plain functions on Arrow, testable
without Ray.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import InputFormat, KnnCommandConfig, QueryKind
from pipeline.errors import LatentError, describe_error
from pipeline.index.input.embeddings import embedding_columns
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
    where_column: str | None = None  # each query's own where= predicate (docs/search.md#filters)


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
    where_column = cfg.input.where_column
    if where_column is not None:
        if where_column not in schema.names:
            raise LatentError(f"input.where_column={where_column}: no such column (columns: {', '.join(schema.names)})")
        t = schema.field(where_column).type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)):
            raise LatentError(f"input.where_column={where_column} holds {t}, not where= predicates (strings)")
    units, total = table_units(tables.fs, tables.paths, tables.format)
    for unit in units:
        unit.update(root=tables.root, column=column, id_column=id_column, query_kind=kind, where_column=where_column)
    return QueryTable(tables.root, tables.format, kind, column, id_column, units, total, where_column)


def query_where(where: str | None, own: str | None) -> str | None:
    """The predicate one query is searched with: the job's ``where`` AND the query's own (either may be absent)."""
    own = own if own is not None and own.strip() else None
    if where is None or own is None:
        return own if where is None else where
    return f"({where}) AND ({own})"


def check_query_wheres(queries: QueryTable, where: str | None, compile: Callable[[str], Any]) -> int:
    """Compile every distinct predicate of the where column (with the job's ``where``) before the job starts.

    A bad one raises LatentError naming the column, the row and the predicate's problem: nothing is written.
    Returns the number of distinct predicates."""
    column = queries.where_column
    if column is None:
        return 0
    seen: set[str | None] = set()
    for unit in queries.units:
        for part in table_batches(unit, [column]):
            values = part.batch.column(column).to_pylist()
            for row, value in zip(part.rows.tolist(), values):
                if value in seen:
                    continue
                seen.add(value)
                combined = query_where(where, value)
                if combined is None:
                    continue
                try:
                    compile(combined)
                except LatentError as err:
                    rel = posixpath.relpath(unit["path"], unit["root"])
                    raise LatentError(f"input.where_column={column}, row {rel}:{row} ({value[:80]!r}): {err}") from err
    return len(seen)


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
        wheres = (
            pc.cast(batch.column(unit["where_column"]), pa.string())
            if unit.get("where_column")
            else pa.nulls(n, pa.string())
        )
        records = pa.table({"query_id": ids, "query": query, "error": error, "where": wheres})
    else:
        records = pa.table(
            {
                "query_id": pa.array([], pa.string()),
                "query": pa.array([], QUERY_TYPES[kind]),
                "error": pa.array([], pa.string()),
                "where": pa.array([], pa.string()),
            }
        )
    if not part.bad:
        return records
    bad = pa.table(
        {
            "query_id": pa.array([f"{rel}:{row}" for row, _ in part.bad], pa.string()),
            "query": pa.nulls(len(part.bad), records.schema.field("query").type),
            "error": pa.array([why for _, why in part.bad], pa.string()),
            "where": pa.nulls(len(part.bad), pa.string()),
        }
    )
    return pa.concat_tables([records, bad])


def read_queries(unit: dict, done: pa.Array | None, rows: int) -> Iterator[pa.Table]:
    """Stage 1 (CPU task): stream a read unit's rows as query records, ``rows`` at a time, without ``done`` ids."""
    columns = list(dict.fromkeys(c for c in (unit["column"], unit["id_column"], unit.get("where_column")) if c))
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
                "where": pa.nulls(1, pa.string()),
            }
        )
