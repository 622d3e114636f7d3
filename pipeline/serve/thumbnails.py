"""Thumbnails of indexed items, found by id only.

The image's location is the item's ``source`` in the index's own metadata (docs/index-directory.md):
a local image file, or ``TAR#key`` for a WebDataset sample. Nothing from a request ever becomes a
path. Anything else (remote URLs, table rows, missing or broken files) has no thumbnail.
"""

from __future__ import annotations

import io
import os
import tarfile
import threading
from collections import OrderedDict

from PIL import Image

from pipeline.encode.preprocess import BadImage, open_image, to_8bit
from pipeline.io.images import IMAGE_EXTENSIONS, is_image_name


class NoThumbnail(Exception):
    """The item has no image this server can read."""


def read_source_image(source: str | None) -> bytes:
    """The encoded image bytes behind an item's ``source``: a local file, or a sample of a local tar."""
    if not source or "://" in source and not source.startswith("file://"):
        raise NoThumbnail("the item's source is not a local image")
    source = source.removeprefix("file://")
    if os.path.isfile(source):
        if not is_image_name(source):
            raise NoThumbnail("the item's source is not an image file")
        with open(source, "rb") as f:
            return f.read()
    tar_path, sep, key = source.rpartition("#")
    if sep and key and os.path.isfile(tar_path):
        return _read_tar_sample_image(tar_path, key)
    raise NoThumbnail("the item's source file is not readable here")


def _read_tar_sample_image(tar_path: str, key: str) -> bytes:
    wanted = {f"{key}.{ext}" for ext in IMAGE_EXTENSIONS}
    try:
        with tarfile.open(tar_path, "r|*") as tar:  # streamed: WebDataset tars are read front to back
            for member in tar:
                if member.isfile() and member.name in wanted:
                    f = tar.extractfile(member)
                    if f is not None:
                        return f.read()
    except (OSError, tarfile.TarError) as err:
        raise NoThumbnail(f"cannot read {tar_path}: {err}") from err
    raise NoThumbnail(f"no image for sample {key!r} in its tar")


def make_thumbnail(data: bytes, size: int, max_pixels: int, quality: int = 85) -> bytes:
    """A JPEG no larger than ``size`` on its long side."""
    try:
        image = to_8bit(open_image(data, max_pixels))  # header only: decompression bombs refused before decoding
        image.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, much faster for big photos
        image = image.convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=quality, optimize=True)
    except BadImage as err:
        raise NoThumbnail(str(err)) from err
    except Exception as err:  # PIL raises many types for broken files
        raise NoThumbnail(f"cannot decode the image: {type(err).__name__}") from err
    return out.getvalue()


class ThumbnailCache:
    """The last ``entries`` thumbnails made, by id (a result grid asks for the same ones again and again)."""

    def __init__(self, entries: int) -> None:
        self.entries = entries
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, id: str) -> bytes | None:
        with self._lock:
            data = self._items.get(id)
            if data is not None:
                self._items.move_to_end(id)
            return data

    def put(self, id: str, data: bytes) -> None:
        if self.entries <= 0:
            return
        with self._lock:
            self._items[id] = data
            self._items.move_to_end(id)
            while len(self._items) > self.entries:
                self._items.popitem(last=False)
