"""Inputs: the one listing/reading interface over the readers of each input format.

``open_corpus`` lists a corpus once, on the driver, and plans its read units (JSON-able dicts);
``read_corpus_unit`` turns a unit into Arrow tables of records (pipeline/io/records.py) in a Ray task.
Ids are derived the same way on every run, so a rerun can skip what is done. The readers:
image folders (pipeline/io/images.py), WebDataset tars (webdataset.py), tables (tables.py, whose
``list_tables``/``table_batches``/``read_images`` the knn job shares).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Iterator
from dataclasses import replace

import pyarrow as pa

from pipeline.config import InputConfig, InputFormat
from pipeline.errors import LatentError
from pipeline.io.images import is_image_name, list_folder, open_image_folder, read_image_files
from pipeline.io.records import Source
from pipeline.io.shards import filesystem
from pipeline.io.tables import find_tables, plan_table, read_table, table_format
from pipeline.io.webdataset import expand_braces, open_webdataset, read_tar

__all__ = ["filter_done_units", "open_corpus", "read_corpus_unit", "units_to_json"]


def detect_format(root: str, files: list[str]) -> InputFormat:
    """What a listing holds: tar shards, else images, else tables (by extension)."""
    lowered = [f.lower() for f in files]
    if any(f.endswith(".tar") for f in lowered):
        return InputFormat.webdataset
    if any(is_image_name(f) for f in lowered):
        return InputFormat.images
    found = table_format(files)
    if found is None:
        raise LatentError(
            f"input.path: found no images, .tar shards or .parquet/.csv/.jsonl tables under {root}; "
            f"set input.format if the files have other extensions"
        )
    return found


def open_corpus(cfg: InputConfig) -> Source:
    """List the corpus at ``cfg.path`` and plan its read units."""
    path = str(cfg.path)
    if "{" in path or path.endswith(".tar"):
        return open_webdataset(expand_braces(path))
    fs, root = filesystem(path)
    if not fs.exists(root):
        raise LatentError(f"input.path: {path} does not exist")
    files, broken = list_folder(fs, root)
    fmt = cfg.format if cfg.format != InputFormat.auto else detect_format(root, files)
    base = posixpath.dirname(root) if fs.isfile(root) else root
    if fmt == InputFormat.images:
        return open_image_folder(base, files, cfg.files_per_task, broken)
    if fmt == InputFormat.webdataset:
        return open_webdataset([posixpath.join(base, f) for f in files if f.lower().endswith(".tar")])
    return plan_table(find_tables(fs, base, files, fmt), cfg)


def read_corpus_unit(unit: dict, done: pa.Array | None = None, rows: int = 1024) -> Iterator[pa.Table]:
    """Records of one unit, without the ids in ``done``."""
    if unit["kind"] == "images":
        yield from read_image_files(unit)  # done files were dropped on the driver (filter_done_units)
    elif unit["kind"] == "tar":
        yield from read_tar(unit, done)
    else:
        yield from read_table(unit, done, rows)


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
    return replace(source, units=units, total_rows=sum(len(u["files"]) for u in units))


def units_to_json(units: list[dict]) -> list[dict[str, str]]:
    return [{"unit": json.dumps(u)} for u in units]
