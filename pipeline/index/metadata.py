"""The index's metadata columns: what ``where=`` can filter on, recorded in index.json (``metadata``).

items.arrow already holds every non-embedding column of the input, typed as in the input (id, source,
text, a table's own columns). Folders and tars carry their JSON sidecars as one string column,
``metadata``; its top-level fields (and nested objects' fields, as ``metadata.a.b``) become columns too,
named ``metadata.<field>`` and typed by Arrow's JSON reader (numbers, strings, booleans, ISO timestamps).
``describe_items`` writes the schema and the memory per row into index.json at every build and append,
so the recorded schema always describes the items.arrow beside it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

from pipeline.index.store.integrity import open_arrow

SIDECAR_COLUMN = "metadata"  # folders' and tars' JSON sidecars, as strings (docs/embedding-dataset.md)
SIDECAR_PREFIX = SIDECAR_COLUMN + "."


def kind_of(type_: pa.DataType) -> str:
    """What a column's values compare with: number, string, bool, timestamp (dates too) or other."""
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    if pa.types.is_integer(type_) or pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return "number"
    if pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_):
        return "string"
    if pa.types.is_boolean(type_):
        return "bool"
    if pa.types.is_timestamp(type_) or pa.types.is_date(type_):
        return "timestamp"
    return "other"


def read_items(path: str | Path) -> pa.Table:
    """items.arrow as one table, memory-mapped (no copy: columns are paged in when read)."""
    reader = open_arrow(Path(path))
    return pa.Table.from_batches([reader.get_batch(i) for i in range(reader.num_record_batches)], reader.schema)


def sidecar_fields(column: pa.ChunkedArray | pa.Array) -> pa.Table | None:
    """The JSON sidecars of a string column as a table of ``metadata.<field>`` columns (one row per row;
    null or ``{}`` where a row has none), or None when the column does not hold JSON objects."""
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)) or len(column) == 0:
        return None
    if column.null_count == len(column):
        return None
    # JSON allows raw newlines only between tokens, so flattening them keeps every valid document intact
    lines = pc.replace_substring_regex(pc.fill_null(column, "{}"), pattern=r"[\r\n]", replacement=" ")
    if isinstance(lines, pa.ChunkedArray):
        lines = lines.combine_chunks()
    data = "\n".join(lines.to_pylist()).encode()
    try:
        table = pajson.read_json(io.BytesIO(data), read_options=pajson.ReadOptions(block_size=max(len(data), 1 << 20)))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != len(column):
        return None
    while any(pa.types.is_struct(field.type) for field in table.schema):
        table = table.flatten()
    names = [SIDECAR_PREFIX + name for name in table.column_names]
    return table.rename_columns(names)


def describe_items(path: str | Path) -> dict[str, Any]:
    """index.json's ``metadata``: every filterable column (name -> type, kind, nulls), the sidecar fields
    found in ``metadata`` JSON, and items.arrow's bytes per row (memory-mapped, paged in when filtered)."""
    table = read_items(path)
    rows = table.num_rows
    columns = {
        field.name: {"type": str(field.type), "kind": kind_of(field.type), "nulls": table.column(field.name).null_count}
        for field in table.schema
    }
    described: dict[str, Any] = {"columns": columns, "bytes_per_row": round(table.nbytes / rows, 1) if rows else 0.0}
    if SIDECAR_COLUMN in table.column_names:
        fields = sidecar_fields(table.column(SIDECAR_COLUMN))
        if fields is not None:
            described["sidecar"] = {
                field.name: {"type": str(field.type), "kind": kind_of(field.type), "nulls": fields.column(i).null_count}
                for i, field in enumerate(fields.schema)
                if field.name not in columns
            }
    return described
