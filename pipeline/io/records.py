"""What every input reader produces: the listed corpus (``Source``) and its records.

A *unit* is a small JSON-able dict (a group of image files, one tar, one Parquet row group, one
CSV/JSONL file); a reader turns one into Arrow tables of *records*:

    id: string, source: string, text: string?, image: binary?, error: string?, <metadata columns>
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import InputFormat

RECORD_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("source", pa.string()),
    pa.field("text", pa.string()),
    pa.field("image", pa.binary()),
    pa.field("error", pa.string()),
]
SIDECAR_RECORD_SCHEMA = pa.schema([*RECORD_FIELDS, pa.field("metadata", pa.string())])  # folders and tars


@dataclass
class Source:
    """A listed corpus: its format, its read units and what columns it holds."""

    format: InputFormat
    root: str
    units: list[dict[str, Any]]
    has_images: bool
    has_texts: bool
    total_rows: int | None = None  # known up front for folders and Parquet
    captioned_rows: int | None = None  # image folders: rows with a caption (known up front)
    metadata_fields: list[pa.Field] = field(default_factory=list)  # passed-through columns, renamed


def is_hidden(rel: str) -> bool:
    """Paths with a component starting with ``.`` or ``_`` are not inputs (latent's own state, dotfiles)."""
    return any(part.startswith((".", "_")) for part in rel.split("/"))


def drop_done(records: pa.Table, done: pa.Array | None) -> pa.Table:
    """``records`` without the ids in ``done``."""
    if done is None or len(done) == 0:
        return records
    return records.filter(pc.invert(pc.is_in(records.column("id"), value_set=done)))


class NotUtf8(ValueError):
    """Text bytes that are not UTF-8: the row is recorded as an error instead of storing mangled text."""


def decode_text(data: bytes, where: str) -> str:
    """Caption/sidecar/text bytes as a string; ``NotUtf8`` names the file and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise NotUtf8(
            f"{where} is not UTF-8 ({err.reason} at byte {err.start}): re-encode it as UTF-8 and rerun "
            f"(delete _errors/ to retry the rows recorded there)"
        ) from None


def relative(path: str, root: str) -> str:
    return posixpath.relpath(path, root)
