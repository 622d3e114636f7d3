"""Inputs: find what a corpus holds and split it into read units that Ray tasks turn into rows.

A *unit* is a small JSON-able dict (a group of image files, one tar, one Parquet row group, one
CSV/JSONL file). ``read_unit`` turns one into Arrow tables of *records*:

    id: string, source: string, text: string?, image: binary?, error: string?, <metadata columns>

Listing happens once, on the driver; reading happens in tasks, so ids are derived the same way on
every run and a rerun can skip what is done.
"""

from __future__ import annotations

import json
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.json as pjson
import pyarrow.parquet as pq

from pipeline.config import InputConfig, InputFormat
from pipeline.errors import LatentError
from pipeline.io.shards import RESERVED_COLUMNS, filesystem

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")
TABLE_EXTENSIONS = {".parquet": InputFormat.parquet, ".csv": InputFormat.csv, ".jsonl": InputFormat.jsonl}
IMAGE_COLUMN_GUESSES = ("image", "image_path", "img", "jpg", "path", "filepath", "file", "image_bytes")
TEXT_COLUMN_GUESSES = ("text", "caption", "txt")
ID_COLUMN_GUESSES = ("id", "key")

RECORD_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("text", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("error", pa.string()),
]


@dataclass
class Source:
    """A listed corpus: its format, its read units and what columns it holds."""

    format: InputFormat
    root: str
    units: list[dict[str, Any]]
    has_images: bool
    has_texts: bool
    total_rows: int | None = None  # known up front for folders and Parquet
    image_column: str | None = None
    text_column: str | None = None
    id_column: str | None = None
    metadata_fields: list[pa.Field] = field(default_factory=list)  # passed-through columns, renamed

    def metadata_schema(self) -> pa.Schema:
        return pa.schema(self.metadata_fields)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def expand_braces(pattern: str) -> list[str]:
    """WebDataset brace patterns: ``shard-{000..009}.tar`` and ``{a,b}``, nested left to right."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail, body = pattern[: match.start()], pattern[match.end() :], match.group(1)
    numeric = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if numeric:
        lo, hi = numeric.groups()
        options = [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    else:
        options = body.split(",")
    return [expanded for option in options for expanded in expand_braces(head + option + tail)]


def _detect_format(fs, root: str, files: list[str]) -> InputFormat:
    lowered = [f.lower() for f in files]
    if any(f.endswith(".tar") for f in lowered):
        return InputFormat.webdataset
    if any(f.endswith(IMAGE_EXTENSIONS) for f in lowered):
        return InputFormat.images
    for ext, fmt in TABLE_EXTENSIONS.items():
        if any(f.endswith(ext) for f in lowered):
            return fmt
    raise LatentError(
        f"input.path: found no images, .tar shards or .parquet/.csv/.jsonl tables under {root}; "
        f"set input.format if the files have other extensions"
    )


def _list_files(fs, root: str) -> list[str]:
    if fs.isfile(root):
        return [posixpath.basename(root)]
    return sorted(rel for p in fs.find(root) if not _is_hidden(rel := posixpath.relpath(p, root)))


def open_source(cfg: InputConfig) -> Source:
    """List the corpus at ``cfg.path`` and plan its read units."""
    path = str(cfg.path)
    if "{" in path or path.endswith(".tar"):
        return _open_webdataset(expand_braces(path))
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise LatentError(f"input.path: {path} does not exist")
    files = _list_files(fs, root)
    fmt = cfg.format if cfg.format != InputFormat.auto else _detect_format(fs, root, files)
    base = posixpath.dirname(root) if fs.isfile(root) else root
    if fmt == InputFormat.images:
        return _open_images(base, files, cfg.files_per_task)
    if fmt == InputFormat.webdataset:
        return _open_webdataset([posixpath.join(base, f) for f in files if f.lower().endswith(".tar")])
    return _open_table(fs, base, files, fmt, cfg)


# -- image folders ------------------------------------------------------------------------------


def _open_images(root: str, files: list[str], files_per_task: int) -> Source:
    by_stem: dict[str, dict[str, str]] = {}
    for rel in files:
        stem, ext = posixpath.splitext(rel)
        by_stem.setdefault(stem, {})[ext.lower()] = rel
    entries = []
    for rel in files:
        stem, ext = posixpath.splitext(rel)
        if ext.lower() in IMAGE_EXTENSIONS:
            sidecars = by_stem[stem]
            entries.append([rel, sidecars.get(".txt"), sidecars.get(".json")])
    if not entries:
        raise LatentError(f"input.path: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    units = [
        {"kind": "images", "root": root, "files": entries[i : i + files_per_task]}
        for i in range(0, len(entries), files_per_task)
    ]
    has_texts = any(caption for _, caption, _ in entries)
    return Source(
        InputFormat.images,
        root,
        units,
        has_images=True,
        has_texts=has_texts,
        total_rows=len(entries),
        metadata_fields=[pa.field("metadata", pa.string())],
    )


def _read_sidecar(fs, path: str | None) -> str | None:
    if path is None:
        return None
    return fs.cat_file(path).decode("utf-8", errors="replace")


def _read_image_files(unit: dict) -> Iterator[pa.Table]:
    fs, root = filesystem(unit["root"])
    rows = []
    for rel, caption, meta in unit["files"]:
        full = posixpath.join(root, rel)
        row = {"id": rel, "source": full, "text": None, "image": None, "error": None, "metadata": None}
        try:
            row["image"] = fs.cat_file(full)
            row["text"] = _read_sidecar(fs, caption and posixpath.join(root, caption))
            row["metadata"] = _read_sidecar(fs, meta and posixpath.join(root, meta))
        except OSError as err:
            row["error"] = f"cannot read file: {err}"
        rows.append(row)
    yield pa.Table.from_pylist(rows, schema=pa.schema([*RECORD_FIELDS, pa.field("metadata", pa.string())]))


# -- WebDataset tars ------------------------------------------------------------------------------


def _open_webdataset(tars: list[str]) -> Source:
    if not tars:
        raise LatentError("input.path: no .tar shards found")
    fs, _ = filesystem(tars[0])
    missing = [t for t in tars if not fs.exists(filesystem(t)[1])]
    if missing:
        raise LatentError(f"input.path: {len(missing)} tar shards do not exist, e.g. {missing[0]}")
    has_texts = _tar_has_captions(tars[0])
    return Source(
        InputFormat.webdataset,
        posixpath.dirname(tars[0]),
        [{"kind": "tar", "path": t} for t in tars],
        has_images=True,
        has_texts=has_texts,
        metadata_fields=[pa.field("metadata", pa.string())],
    )


def _tar_has_captions(tar_path: str, look_at: int = 64) -> bool:
    fs, path = filesystem(tar_path)
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for i, member in enumerate(tar):
                if member.name.lower().endswith(".txt"):
                    return True
                if i >= look_at:
                    break
    except (tarfile.TarError, OSError):
        return False
    return False


def _split_key(name: str) -> tuple[str, str]:
    directory, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(directory, stem) if directory else stem, ext.lower()


def _tar_samples(tar_path: str) -> Iterator[dict]:
    """Samples of a tar as dicts of extension -> bytes, keyed by ``__key__``; a broken tar yields an error."""
    fs, path = filesystem(tar_path)
    current: dict[str, Any] = {}
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if current and key != current["__key__"]:
                    yield current
                    current = {}
                current["__key__"] = key
                current[ext] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        if current:
            yield current
        yield {"__key__": f"{posixpath.basename(tar_path)}#unreadable", "__error__": f"unreadable tar: {err}"}
        return
    if current:
        yield current


def _read_tar(unit: dict, done: pa.Array | None, rows_per_batch: int = 256) -> Iterator[pa.Table]:
    schema = pa.schema([*RECORD_FIELDS, pa.field("metadata", pa.string())])
    rows: list[dict] = []
    for sample in _tar_samples(unit["path"]):
        image_ext = next((e for e in ("jpg", "jpeg", "png", "webp", "bmp", "gif") if e in sample), None)
        error = sample.get("__error__") or (None if image_ext else "no image in sample")
        text = sample.get("txt")
        meta = sample.get("json")
        rows.append(
            {
                "id": sample["__key__"],
                "source": f"{unit['path']}#{sample['__key__']}",
                "text": text.decode("utf-8", errors="replace") if text is not None else None,
                "image": sample.get(image_ext) if image_ext else None,
                "error": error,
                "metadata": meta.decode("utf-8", errors="replace") if meta is not None else None,
            }
        )
        if len(rows) >= rows_per_batch:
            yield _drop_done(pa.Table.from_pylist(rows, schema=schema), done)
            rows = []
    if rows:
        yield _drop_done(pa.Table.from_pylist(rows, schema=schema), done)


# -- tables: Parquet, CSV, JSONL -------------------------------------------------------------------


def _table_schema(fs, path: str, fmt: InputFormat) -> pa.Schema:
    with fs.open(path, "rb") as f:
        if fmt == InputFormat.parquet:
            return pq.read_schema(f)
        if fmt == InputFormat.csv:
            return pcsv.open_csv(f).schema
        return pjson.open_json(f).schema


def _pick(configured: str | None, guesses: tuple[str, ...], names: list[str], key: str) -> str | None:
    if configured is not None:
        if configured not in names:
            raise LatentError(f"{key}: column '{configured}' is not in the input (columns: {', '.join(names)})")
        return configured
    return next((g for g in guesses if g in names), None)


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


def _open_table(fs, root: str, files: list[str], fmt: InputFormat, cfg: InputConfig) -> Source:
    ext = next(e for e, f in TABLE_EXTENSIONS.items() if f == fmt)
    paths = [posixpath.join(root, f) for f in files if f.lower().endswith(ext)]
    if not paths:
        raise LatentError(f"input.path: no {ext} files under {root}")
    schema = _table_schema(fs, paths[0], fmt)
    names = schema.names
    image_col = _pick(cfg.image_column, IMAGE_COLUMN_GUESSES, names, "input.image_column")
    text_col = _pick(cfg.text_column, TEXT_COLUMN_GUESSES, names, "input.text_column")
    id_col = _pick(cfg.id_column, ID_COLUMN_GUESSES, names, "input.id_column")
    if image_col is None and text_col is None:
        raise LatentError(
            f"the input has neither an image nor a text column (columns: {', '.join(names)}); "
            f"set input.image_column and/or input.text_column"
        )
    used = {image_col, text_col, id_col}
    metadata_fields = [
        pa.field(f"input_{f.name}" if f.name in RESERVED_COLUMNS else f.name, f.type)
        for f in schema
        if f.name not in used
    ]
    units, total = table_units(fs, paths, fmt)
    columns = {"image": image_col, "text": text_col, "id": id_col}
    for unit in units:
        unit.update(root=root, columns=columns)
    return Source(
        fmt,
        root,
        units,
        has_images=image_col is not None,
        has_texts=text_col is not None,
        total_rows=total,
        image_column=image_col,
        text_column=text_col,
        id_column=id_col,
        metadata_fields=metadata_fields,
    )


def _table_batches(unit: dict) -> Iterator[pa.RecordBatch]:
    fs, path = filesystem(unit["path"])
    with fs.open(path, "rb") as f:
        if unit["kind"] == "parquet":
            yield from pq.ParquetFile(f).iter_batches(row_groups=[unit["row_group"]], batch_size=1024)
        elif unit["kind"] == "csv":
            yield from pcsv.open_csv(f)
        else:
            yield from pjson.open_json(f)


def _records_from_table(batch: pa.RecordBatch, unit: dict, offset: int) -> pa.Table:
    columns = unit["columns"]
    table = pa.Table.from_batches([batch])
    n = table.num_rows
    rel = posixpath.relpath(unit["path"], unit["root"])
    if columns["id"]:
        ids = pc.cast(table.column(columns["id"]), pa.string())
    else:
        ids = pa.array([f"{rel}:{offset + i}" for i in range(n)], pa.string())
    text = pc.cast(table.column(columns["text"]), pa.string()) if columns["text"] else pa.nulls(n, pa.string())
    source = pa.array([f"{unit['path']}:{offset + i}" for i in range(n)], pa.string())
    image = pa.nulls(n, pa.binary())
    error = pa.nulls(n, pa.string())
    if columns["image"]:
        image, error, source = _table_images(table.column(columns["image"]), unit, source)
    meta_cols = {
        (f"input_{name}" if name in RESERVED_COLUMNS else name): table.column(name)
        for name in table.column_names
        if name not in columns.values()
    }
    return pa.table({"id": ids, "source": source, "text": text, "image": image, "error": error, **meta_cols})


def _table_images(column: pa.ChunkedArray, unit: dict, source: pa.Array) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Image bytes from a column of bytes or of paths (relative paths are relative to the table file)."""
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        values = column.to_pylist()
        errors = [None if v else "missing image" for v in values]
        return pa.array(values, pa.binary()), pa.array(errors, pa.string()), source
    fs, table_path = filesystem(unit["path"])
    base = posixpath.dirname(table_path)
    images, errors, sources = [], [], []
    for value in column.to_pylist():
        if not value:
            images.append(None)
            errors.append("missing image path")
            sources.append(None)
            continue
        path = value if value.startswith("/") or "://" in value else posixpath.join(base, value)
        sources.append(path)
        try:
            images.append(fs.cat_file(filesystem(path)[1]))
            errors.append(None)
        except OSError as err:
            images.append(None)
            errors.append(f"cannot read image file: {err}")
    return pa.array(images, pa.binary()), pa.array(errors, pa.string()), pa.array(sources, pa.string())


def _read_table(unit: dict, done: pa.Array | None) -> Iterator[pa.Table]:
    offset = unit["offset"]
    try:
        for batch in _table_batches(unit):
            records = _records_from_table(batch, unit, offset)
            offset += batch.num_rows
            yield _drop_done(records, done)
    except (pa.ArrowInvalid, OSError) as err:
        rel = posixpath.relpath(unit["path"], unit["root"])
        yield pa.Table.from_pylist(
            [{"id": f"{rel}#unreadable@{offset}", "source": unit["path"], "error": f"unreadable table: {err}"}],
            schema=pa.schema(RECORD_FIELDS),
        )


def _drop_done(records: pa.Table, done: pa.Array | None) -> pa.Table:
    if done is None or len(done) == 0:
        return records
    return records.filter(pc.invert(pc.is_in(records.column("id"), value_set=done)))


def read_unit(unit: dict, done: pa.Array | None = None) -> Iterator[pa.Table]:
    """Records of one unit, without the ids in ``done``."""
    if unit["kind"] == "images":
        yield from _read_image_files(unit)  # done files were dropped on the driver (filter_done_units)
    elif unit["kind"] == "tar":
        yield from _read_tar(unit, done)
    else:
        yield from _read_table(unit, done)


def filter_done_units(source: Source, done: pa.Array) -> Source:
    """For image folders, ids are known before reading: drop done files on the driver."""
    if source.format != InputFormat.images or len(done) == 0:
        return source
    done_set = set(done.to_pylist())
    units = []
    for unit in source.units:
        todo = [entry for entry in unit["files"] if entry[0] not in done_set]
        if todo:
            units.append({**unit, "files": todo})
    pending = sum(len(u["files"]) for u in units)
    return Source(**{**source.__dict__, "units": units, "total_rows": pending})


def units_to_json(units: list[dict]) -> list[dict[str, str]]:
    return [{"unit": json.dumps(u)} for u in units]
