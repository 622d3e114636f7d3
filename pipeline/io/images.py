"""The image-folder reader: image files (any depth), each with optional ``.txt`` caption and ``.json`` sidecars.

Local folders are walked following symbolic links, so a linked sub-folder is read; a link that
loops back to a folder being walked (or that cannot be resolved) is recorded as an error row, not
skipped in silence. Other filesystems are listed with fsspec.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterator

import pyarrow as pa
from fsspec.implementations.local import LocalFileSystem

from pipeline.config import InputFormat
from pipeline.errors import LatentError
from pipeline.io.records import SIDECAR_RECORD_SCHEMA, NotUtf8, Source, decode_text, is_hidden
from pipeline.io.shards import filesystem

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif")  # what latent reads as images, everywhere


def is_image_name(name: str) -> bool:
    return name.lower().endswith(tuple(f".{ext}" for ext in IMAGE_EXTENSIONS))


def walk_local(root: str) -> tuple[list[str], dict[str, str]]:
    """Files below a local ``root`` (relative, sorted), following links, and the links that loop or dangle."""
    files: list[str] = []
    broken: dict[str, str] = {}
    seen: set[tuple[int, int]] = set()

    def walk(directory: str, rel: str, ancestors: tuple[tuple[int, int], ...]) -> None:
        try:
            entries = sorted(os.scandir(directory), key=lambda e: e.name)
        except OSError as err:
            broken[rel or "."] = f"cannot list folder: {err.strerror}"
            return
        for entry in entries:
            name = f"{rel}/{entry.name}" if rel else entry.name
            if is_hidden(entry.name):
                continue
            try:
                is_dir = entry.is_dir()  # follows links
                stat = entry.stat() if is_dir else None
            except OSError as err:  # a loop of links (ELOOP) or an unreadable entry
                if is_image_name(entry.name) or "." not in entry.name:  # an image, or maybe a folder
                    broken[name] = f"unreadable entry: {err.strerror}"
                continue
            if is_dir:
                key = (stat.st_dev, stat.st_ino)
                if key in ancestors:
                    target = os.path.realpath(entry.path)
                    broken[name] = f"symbolic link loop: {name} -> {target}, a folder that contains it; skipped"
                    continue
                if key in seen:
                    continue  # the same folder reached twice through links: read once
                seen.add(key)
                walk(entry.path, name, (*ancestors, key))
            elif entry.is_symlink() and not os.path.exists(entry.path):
                if is_image_name(entry.name):
                    try:
                        os.stat(entry.path)
                        reason = "unreadable"
                    except OSError as err:
                        reason = err.strerror
                    broken[name] = f"broken symbolic link: {name} -> {os.readlink(entry.path)} ({reason})"
            else:
                files.append(name)

    top = os.stat(root)
    seen.add((top.st_dev, top.st_ino))
    walk(root, "", ((top.st_dev, top.st_ino),))
    return sorted(files), broken


def open_image_folder(root: str, files: list[str], files_per_task: int, broken: dict[str, str] | None = None) -> Source:
    """Plan the read units of the image files among ``files`` (relative to ``root``)."""
    broken = broken or {}
    by_stem: dict[str, dict[str, str]] = {}
    for rel in files:
        stem, ext = posixpath.splitext(rel)
        by_stem.setdefault(stem, {})[ext.lower()] = rel
    entries = []
    for rel in files:
        if is_image_name(rel):
            sidecars = by_stem[posixpath.splitext(rel)[0]]
            entries.append([rel, sidecars.get(".txt"), sidecars.get(".json"), None])
    entries += [[rel, None, None, error] for rel, error in sorted(broken.items())]
    if not any(error is None for *_, error in entries):
        raise LatentError(f"input.path: no image files ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    units = [
        {"kind": "images", "root": root, "files": entries[i : i + files_per_task]}
        for i in range(0, len(entries), files_per_task)
    ]
    captioned = sum(1 for _, caption, _, error in entries if caption and error is None)
    return Source(
        InputFormat.images,
        root,
        units,
        has_images=True,
        has_texts=captioned > 0,
        total_rows=len(entries),
        captioned_rows=captioned,
        metadata_fields=[pa.field("metadata", pa.string())],
    )


def read_image_files(unit: dict) -> Iterator[pa.Table]:
    """Records of one unit of an image folder (done files were dropped on the driver)."""
    fs, root = filesystem(unit["root"])
    rows = []
    for rel, caption, meta, error in unit["files"]:
        full = posixpath.join(root, rel)
        row = {"id": rel, "source": full, "text": None, "image": None, "error": error, "metadata": None}
        if error is None:
            try:
                row["image"] = fs.cat_file(full)
                if caption:
                    row["text"] = decode_text(fs.cat_file(posixpath.join(root, caption)), caption)
                if meta:
                    row["metadata"] = decode_text(fs.cat_file(posixpath.join(root, meta)), meta)
            except OSError as err:
                row["image"], row["error"] = None, f"cannot read file: {err.strerror or err}"
            except NotUtf8 as err:
                row["image"], row["text"], row["error"] = None, None, str(err)
        rows.append(row)
    yield pa.Table.from_pylist(rows, schema=SIDECAR_RECORD_SCHEMA)


def list_folder(fs, root: str) -> tuple[list[str], dict[str, str]]:
    """Files below ``root`` (relative, sorted; hidden ones left out) and, locally, the links that are broken."""
    if fs.isfile(root):
        return [posixpath.basename(root)], {}
    if isinstance(fs, LocalFileSystem):
        return walk_local(root)
    return sorted(rel for p in fs.find(root) if not is_hidden(rel := posixpath.relpath(p, root))), {}
