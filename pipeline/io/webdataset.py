"""The WebDataset reader: tar shards of samples (``KEY.jpg``, ``KEY.txt``, ``KEY.json``), one read unit per tar."""

from __future__ import annotations

import posixpath
import re
import tarfile
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from pipeline.config import InputFormat
from pipeline.errors import LatentError
from pipeline.io.images import IMAGE_EXTENSIONS
from pipeline.io.records import SIDECAR_RECORD_SCHEMA, NotUtf8, Source, decode_text, drop_done
from pipeline.io.shards import filesystem


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


def open_webdataset(tars: list[str]) -> Source:
    """Plan one read unit per tar shard."""
    if not tars:
        raise LatentError("input.path: no .tar shards found")
    fs, _ = filesystem(tars[0])
    missing = [t for t in tars if not fs.exists(filesystem(t)[1])]
    if missing:
        raise LatentError(f"input.path: {len(missing)} tar shards do not exist, e.g. {missing[0]}")
    return Source(
        InputFormat.webdataset,
        posixpath.dirname(tars[0]),
        [{"kind": "tar", "path": t} for t in tars],
        has_images=True,
        has_texts=_tar_has_captions(tars[0]),
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


def _record(sample: dict, tar_path: str) -> dict:
    image_ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    row = {
        "id": sample["__key__"],
        "source": f"{tar_path}#{sample['__key__']}",
        "text": None,
        "image": sample.get(image_ext) if image_ext else None,
        "error": sample.get("__error__") or (None if image_ext else "no image in sample"),
        "metadata": None,
    }
    try:
        if sample.get("txt") is not None:
            row["text"] = decode_text(sample["txt"], f"{row['id']}.txt")
        if sample.get("json") is not None:
            row["metadata"] = decode_text(sample["json"], f"{row['id']}.json")
    except NotUtf8 as err:
        row.update(image=None, text=None, error=row["error"] or str(err))
    return row


def read_tar(unit: dict, done: pa.Array | None, rows_per_batch: int = 256) -> Iterator[pa.Table]:
    """Records of one tar shard, without the ids in ``done``."""
    rows: list[dict] = []
    for sample in _tar_samples(unit["path"]):
        rows.append(_record(sample, unit["path"]))
        if len(rows) >= rows_per_batch:
            yield drop_done(pa.Table.from_pylist(rows, schema=SIDECAR_RECORD_SCHEMA), done)
            rows = []
    if rows:
        yield drop_done(pa.Table.from_pylist(rows, schema=SIDECAR_RECORD_SCHEMA), done)
