"""The table reader: Parquet, CSV and JSONL files whose rows are items (image bytes or paths/URLs, texts).

Embed and knn share it: ``list_tables`` finds the files and their schema, ``table_units`` splits them
into read units (a Parquet row group, a CSV/JSONL file), ``table_batches`` reads a unit (a malformed
JSONL line becomes a bad row naming its file and line, the rest of the file is read), and
``read_images`` fetches the images a column points to, each with the filesystem of its own URL.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from pipeline.config import InputConfig, InputFormat
from pipeline.errors import LatentError, describe_error
from pipeline.io.images import list_folder
from pipeline.io.records import RECORD_FIELDS, NotUtf8, Source, drop_done
from pipeline.io.shards import RESERVED_COLUMNS, filesystem

TABLE_EXTENSIONS = {".parquet": InputFormat.parquet, ".csv": InputFormat.csv, ".jsonl": InputFormat.jsonl}
IMAGE_COLUMN_GUESSES = ("image", "image_path", "img", "jpg", "path", "filepath", "file", "image_bytes")
TEXT_COLUMN_GUESSES = ("text", "caption", "txt")
ID_COLUMN_GUESSES = ("id", "key")


@dataclass
class TableFiles:
    """The table files of an input path: where they are, their format and the first file's schema."""

    fs: Any
    root: str  # the folder ids and relative image paths are relative to
    format: InputFormat
    paths: list[str]
    schema: pa.Schema


def table_format(files: list[str]) -> InputFormat | None:
    """The table format of a file listing, by extension (the first of .parquet, .csv, .jsonl found)."""
    lowered = [f.lower() for f in files]
    return next((fmt for ext, fmt in TABLE_EXTENSIONS.items() if any(f.endswith(ext) for f in lowered)), None)


def table_schema(fs, path: str, fmt: InputFormat) -> pa.Schema:
    with fs.open(path, "rb") as f:
        if fmt == InputFormat.parquet:
            return pq.read_schema(f)
        if fmt == InputFormat.csv:
            return pcsv.open_csv(f).schema
        return _jsonl_schema(f)


def find_tables(fs, base: str, files: list[str], fmt: InputFormat, key: str = "input.path") -> TableFiles:
    """The table files of ``fmt`` among ``files`` (relative to ``base``); ``fmt=auto``: by extension."""
    if fmt == InputFormat.auto:
        fmt = table_format(files)
    if fmt not in TABLE_EXTENSIONS.values():
        raise LatentError(f"{key}={base}: no .parquet, .csv or .jsonl files (input.format={fmt})")
    ext = next(e for e, f in TABLE_EXTENSIONS.items() if f == fmt)
    paths = [posixpath.join(base, f) for f in files if f.lower().endswith(ext)]
    if not paths:
        raise LatentError(f"{key}={base}: no {ext} files")
    return TableFiles(fs, base, fmt, paths, table_schema(fs, paths[0], fmt))


def list_tables(path: str, fmt: InputFormat, key: str = "input.path") -> TableFiles:
    """The table files at ``path`` (a file or a folder); ``fmt=auto``: by extension."""
    fs, root = filesystem(str(path))
    if not fs.exists(root):
        raise LatentError(f"{key}={path}: no such file or directory")
    files, _ = list_folder(fs, root)
    return find_tables(fs, posixpath.dirname(root) if fs.isfile(root) else root, files, fmt, key)


def pick_column(configured: str | None, guesses: tuple[str, ...], names: list[str], key: str) -> str | None:
    """The configured column (which must exist), else the first guess present."""
    if configured is not None:
        if configured not in names:
            raise LatentError(f"{key}: column '{configured}' is not in the input (columns: {', '.join(names)})")
        return configured
    return next((g for g in guesses if g in names), None)


def check_image_column(schema: pa.Schema, column: str, key: str) -> None:
    """An image column holds bytes, or strings (paths or URLs); anything else is named as an error."""
    t = schema.field(column).type
    if not (
        pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
    ):
        raise LatentError(
            f"{key}: column '{column}' holds {t}, not images (bytes) or image paths/URLs (strings); "
            f"set {key} to the column that holds the images"
        )


def table_units(fs, paths: list[str], fmt: InputFormat) -> tuple[list[dict[str, Any]], int | None]:
    """Read units of table files: one per Parquet row group (rows known), one per CSV/JSONL file (rows unknown)."""
    units: list[dict[str, Any]] = []
    total: int | None = 0
    for path in paths:
        if fmt == InputFormat.parquet:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            offset = 0
            for group in range(meta.num_row_groups):
                units.append({"kind": "parquet", "path": path, "row_group": group, "offset": offset})
                offset += meta.row_group(group).num_rows
            total = None if total is None else total + offset
        else:
            units.append({"kind": fmt.value, "path": path, "offset": 0})
            total = None
    return units, total


# -- reading a unit ------------------------------------------------------------------------------------


@dataclass
class TableBatch:
    """Rows of a unit: a batch of good rows with their row numbers in the file, and the rows that are not."""

    batch: pa.Table
    rows: np.ndarray  # row number in the file of each row of ``batch``
    bad: list[tuple[int, str]] = field(default_factory=list)  # (row number, what is wrong with it)


def _jsonl_schema(f) -> pa.Schema:
    lines = []
    for raw in f:
        if raw.strip() and _json_object(raw):
            lines.append(raw if raw.endswith(b"\n") else raw + b"\n")
        if len(lines) >= 1000:
            break
    if not lines:
        return pa.schema([])
    return _parse_lines(lines).schema


def _parse_lines(lines: list[bytes]) -> pa.Table:
    data = b"".join(lines)
    options = pjson.ReadOptions(block_size=max(1 << 20, len(data) + 1))  # a line must fit in a block
    return pjson.read_json(io.BytesIO(data), read_options=options)


def _json_object(raw: bytes) -> bool:
    try:
        return isinstance(json.loads(raw), dict)
    except ValueError:
        return False


def _jsonl_batches(f, path: str, rows: int) -> Iterator[TableBatch]:
    """JSONL read line by line: each malformed line is a bad row naming the file and line; the rest is read."""
    good: list[bytes] = []
    numbers: list[int] = []
    bad: list[tuple[int, str]] = []
    row = 0

    def flush() -> TableBatch:
        if not good:
            return TableBatch(pa.table({}), np.zeros(0, np.int64), list(bad))
        try:
            table = _parse_lines(good)
            return TableBatch(table, np.asarray(numbers, np.int64), list(bad))
        except pa.ArrowInvalid as err:  # lines that disagree on a column's type
            why = f"{path}: rows {numbers[0]}..{numbers[-1]}: {describe_error(err)}"
            return TableBatch(pa.table({}), np.zeros(0, np.int64), sorted([*bad, *((n, why) for n in numbers)]))

    for line, raw in enumerate(f, start=1):
        if not raw.strip():
            continue
        try:
            value = json.loads(raw)
            if not isinstance(value, dict):
                raise ValueError(f"a JSON {type(value).__name__}, not an object")
            good.append(raw if raw.endswith(b"\n") else raw + b"\n")
            numbers.append(row)
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError too
            bad.append((row, f"malformed JSON at {path} line {line}: {err}"))
        row += 1
        if len(good) + len(bad) >= rows:
            yield flush()
            good, numbers, bad = [], [], []
    if good or bad:
        yield flush()


def table_batches(unit: dict, columns: list[str] | None = None, rows: int = 1024) -> Iterator[TableBatch]:
    """The rows of one read unit, ``rows`` at a time (``columns``: only these, when given)."""
    fs, path = filesystem(unit["path"])
    offset = unit["offset"]
    with fs.open(path, "rb") as f:
        if unit["kind"] == "jsonl":
            for part in _jsonl_batches(f, unit["path"], rows):
                if columns is not None and part.batch.num_columns:
                    part.batch = _select(part.batch, columns)
                yield part
            return
        if unit["kind"] == "parquet":
            batches = pq.ParquetFile(f).iter_batches(row_groups=[unit["row_group"]], batch_size=rows, columns=columns)
        else:
            batches = (b.select(columns) if columns else b for b in pcsv.open_csv(f))
        for batch in batches:
            yield TableBatch(pa.Table.from_batches([batch]), np.arange(offset, offset + batch.num_rows))
            offset += batch.num_rows


def _select(table: pa.Table, columns: list[str]) -> pa.Table:
    """``columns`` of ``table``; a column no line of this batch has is all nulls."""
    return pa.table({c: table.column(c) if c in table.column_names else pa.nulls(table.num_rows) for c in columns})


def read_images(values: list[Any], table_path: str) -> tuple[list[bytes | None], list[str | None], list[str | None]]:
    """(image bytes, error, source) of each value of an image column: bytes, or a path or URL.

    A URL (``s3://``, ``gs://``, ``https://``, ``file://`` …) is read with its own filesystem; a
    path without a scheme is on the table's filesystem, relative to the table's folder.
    """
    table_fs, table_file = filesystem(table_path)
    base = posixpath.dirname(table_file)
    local = isinstance(table_fs, LocalFileSystem)
    images: list[bytes | None] = []
    errors: list[str | None] = []
    sources: list[str | None] = []
    for value in values:
        if isinstance(value, (bytes, bytearray)):
            images.append(bytes(value) or None)
            errors.append(None if value else "missing image")
            sources.append(None)
            continue
        if not value:
            images.append(None)
            errors.append("missing image path")
            sources.append(None)
            continue
        if "://" in value:
            fs, path = fsspec.core.url_to_fs(value)
            source = value
        else:
            fs, path = table_fs, value if value.startswith("/") else posixpath.join(base, value)
            source = path if local else table_fs.unstrip_protocol(path)
        sources.append(source)
        try:
            images.append(fs.cat_file(path))
            errors.append(None)
        except (OSError, ValueError) as err:
            images.append(None)
            errors.append(f"cannot read image file: {describe_error(err)}")
    return images, errors, sources


# -- the embed job's table input ---------------------------------------------------------------------------


def plan_table(tables: TableFiles, cfg: InputConfig) -> Source:
    """Plan the read units of a table corpus and decide its image, text and id columns."""
    names = tables.schema.names
    image_col = pick_column(cfg.image_column, IMAGE_COLUMN_GUESSES, names, "input.image_column")
    text_col = pick_column(cfg.text_column, TEXT_COLUMN_GUESSES, names, "input.text_column")
    id_col = pick_column(cfg.id_column, ID_COLUMN_GUESSES, names, "input.id_column")
    if image_col is None and text_col is None:
        raise LatentError(
            f"the input has neither an image nor a text column (columns: {', '.join(names)}); "
            f"set input.image_column and/or input.text_column"
        )
    if image_col is not None:
        check_image_column(tables.schema, image_col, "input.image_column")
    used = {image_col, text_col, id_col}
    metadata_fields = [
        pa.field(f"input_{f.name}" if f.name in RESERVED_COLUMNS else f.name, f.type)
        for f in tables.schema
        if f.name not in used
    ]
    units, total = table_units(tables.fs, tables.paths, tables.format)
    columns = {"image": image_col, "text": text_col, "id": id_col}
    for unit in units:
        unit.update(root=tables.root, columns=columns)
    return Source(
        tables.format,
        tables.root,
        units,
        has_images=image_col is not None,
        has_texts=text_col is not None,
        total_rows=total,
        metadata_fields=metadata_fields,
    )


def _column(table: pa.Table, name: str) -> pa.ChunkedArray:
    return table.column(name) if name in table.column_names else pa.chunked_array([pa.nulls(table.num_rows)])


def _text_column(column: pa.ChunkedArray, where: str) -> tuple[pa.Array, list[str | None]]:
    """Texts as strings; binary texts that are not UTF-8 are nulls with an error."""
    if not (pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type)):
        return pc.cast(column, pa.string()), [None] * len(column)
    from pipeline.io.records import decode_text

    texts: list[str | None] = []
    errors: list[str | None] = []
    for value in column.to_pylist():
        try:
            texts.append(None if value is None else decode_text(value, where))
            errors.append(None)
        except NotUtf8 as err:
            texts.append(None)
            errors.append(str(err))
    return pa.array(texts, pa.string()), errors


def records_from_table(part: TableBatch, unit: dict) -> pa.Table:
    """Embed records of a batch of table rows (and of its bad rows)."""
    columns = unit["columns"]
    table = part.batch
    n = table.num_rows
    rel = posixpath.relpath(unit["path"], unit["root"])
    numbers = part.rows.tolist()
    if columns["id"]:
        ids = pc.cast(_column(table, columns["id"]), pa.string())
    else:
        ids = pa.array([f"{rel}:{row}" for row in numbers], pa.string())
    errors: list[str | None] = [None] * n
    text = pa.nulls(n, pa.string())
    if columns["text"]:
        text, errors = _text_column(_column(table, columns["text"]), f"{rel}: column '{columns['text']}'")
    sources: list[str | None] = [f"{unit['path']}:{row}" for row in numbers]
    image = pa.nulls(n, pa.binary())
    if columns["image"]:
        images, image_errors, image_sources = read_images(_column(table, columns["image"]).to_pylist(), unit["path"])
        image = pa.array(images, pa.binary())
        errors = [e or i for e, i in zip(errors, image_errors)]
        sources = [s or t for s, t in zip(image_sources, sources)]
    meta = {
        (f"input_{name}" if name in RESERVED_COLUMNS else name): table.column(name)
        for name in table.column_names
        if name not in columns.values()
    }
    records = pa.table(
        {
            "id": ids,
            "source": pa.array(sources, pa.string()),
            "text": text,
            "image": image,
            "error": pa.array(errors, pa.string()),
            **meta,
        }
    )
    if not part.bad:
        return records
    bad = pa.Table.from_pylist(
        [{"id": f"{rel}:{row}", "source": f"{unit['path']}:{row}", "error": why} for row, why in part.bad],
        schema=pa.schema(RECORD_FIELDS),
    )
    if not n:
        return bad
    return pa.concat_tables([records, bad], promote_options="default")


def read_table(unit: dict, done: pa.Array | None, rows: int = 1024) -> Iterator[pa.Table]:
    """Records of one table unit, without the ids in ``done``; an unreadable rest of a file is one error row."""
    offset = unit["offset"]
    try:
        for part in table_batches(unit, rows=rows):
            offset = int(part.rows[-1]) + 1 if len(part.rows) else offset
            yield drop_done(records_from_table(part, unit), done)
    except (pa.ArrowInvalid, OSError) as err:
        rel = posixpath.relpath(unit["path"], unit["root"])
        yield pa.Table.from_pylist(
            [
                {
                    "id": f"{rel}#unreadable@{offset}",
                    "source": unit["path"],
                    "error": f"unreadable table from row {offset}: {describe_error(err)}",
                }
            ],
            schema=pa.schema(RECORD_FIELDS),
        )
