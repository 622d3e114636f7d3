"""Image decoding and open_clip's eval transform, split at the uint8/float boundary.

open_clip's transform is PIL steps (resize, crop, RGB) followed by ToTensor and Normalize. The
PIL steps run in CPU decode tasks and yield uint8 arrays (4x smaller than float32 to move); the
encoder finishes with ``to_tensor_normalized``, which is the exact arithmetic of ToTensor and
Normalize, so vectors equal ``model.encode_image(preprocess(img))``.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.errors import describe_error

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of 16-bit greyscale (PNG)


class BadImage(ValueError):
    """An input that is not a usable image; the row is recorded as an error."""


@dataclass
class ImagePrep:
    """The PIL part of an open_clip eval transform plus the normalisation the encoder applies."""

    pil_steps: object  # torchvision Compose of PIL -> PIL steps
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]

    @classmethod
    def from_transform(cls, transform) -> ImagePrep:
        from torchvision.transforms import Compose, Normalize

        steps = list(transform.transforms)
        names = [type(t).__name__ for t in steps]
        if names[-2:] != ["MaybeToTensor", "Normalize"] and names[-2:] != ["ToTensor", "Normalize"]:
            raise ValueError(f"unexpected open_clip transform layout: {names}")
        norm: Normalize = steps[-1]
        crop = next(t for t in steps if type(t).__name__ == "CenterCrop")
        return cls(Compose(steps[:-2]), tuple(norm.mean), tuple(norm.std), tuple(crop.size))

    def prepare(self, image: Image.Image) -> np.ndarray:
        """uint8 HxWx3 array of the resized, cropped RGB image."""
        out = self.pil_steps(image)
        array = np.asarray(out, dtype=np.uint8)
        if array.shape != (*self.size, 3):
            raise BadImage(f"preprocessed to unexpected shape {array.shape}")
        return array

    def to_tensor_normalized(self, batch: torch.Tensor) -> torch.Tensor:
        """NxHxWx3 uint8 (any device) -> Nx3xHxW float32, as ToTensor then Normalize compute it."""
        x = batch.permute(0, 3, 1, 2).float().div(255)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        return (x - mean) / std


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    """The decompression-bomb check of every image latent opens (corpus, query, thumbnail), from its header."""
    if width * height > max_pixels:
        raise BadImage(f"image too large: {width}x{height} pixels > max_image_pixels={max_pixels}")


def open_image(data: bytes, max_pixels: int) -> Image.Image:
    """Image bytes opened lazily (header only) and checked against ``max_pixels`` before anything is decoded."""
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:  # Pillow's own guard, where the process keeps it (a library user)
        raise BadImage(f"image too large for Pillow's MAX_IMAGE_PIXELS: {describe_error(err)}") from err
    except Exception as err:  # PIL raises many types for broken files
        raise BadImage(f"cannot decode image: {describe_error(err)}") from err
    check_pixels(*image.size, max_pixels)
    return image


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit greyscale (PNG) scaled to 8 bits (65535 -> 255); ``convert("RGB")`` would clip it to white."""
    if image.mode not in SIXTEEN_BIT_MODES:
        return image
    values = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8), mode="L")


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Open image bytes (first frame of animations), refusing empty, broken and huge images; 16 bits -> 8."""
    image = open_image(data, max_pixels)
    try:
        image.load()
        return to_8bit(image)
    except Exception as err:  # PIL raises many types for broken files
        raise BadImage(f"cannot decode image: {describe_error(err)}") from err


def prepare_records(records: pa.Table, prep: ImagePrep | None, needs_text: bool, max_pixels: int) -> pa.Table:
    """Records (with image bytes) -> rows ready to encode: ``pixels`` (uint8, flattened) replaces ``image``.

    Rows that cannot be used get an ``error`` and zero pixels; they flow on to be recorded, not dropped.
    """
    errors = records.column("error").to_pylist()
    table = records.drop_columns(["image"])
    if prep is not None:
        height, width = prep.size
        pixels = np.zeros((records.num_rows, height, width, 3), dtype=np.uint8)
        for i, data in enumerate(records.column("image").to_pylist()):
            if errors[i] is not None:
                continue
            try:
                pixels[i] = prep.prepare(decode_image(data, max_pixels))
            except BadImage as err:
                errors[i] = str(err)
        flat = pa.array(pixels.reshape(-1), type=pa.uint8())
        table = table.append_column("pixels", pa.FixedSizeListArray.from_arrays(flat, height * width * 3))
    if needs_text:
        missing = (
            "missing caption (modality=both needs one for every image; modality=auto embeds every image and "
            "the captions that exist)"
            if prep is not None
            else "missing text"
        )
        errors = [e or (None if t else missing) for e, t in zip(errors, records.column("text").to_pylist())]
    return table.set_column(table.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))


def pixels_to_numpy(column: pa.ChunkedArray | pa.Array, size: tuple[int, int]) -> np.ndarray:
    """The ``pixels`` column back as an NxHxWx3 uint8 array (zero-copy when it is one chunk)."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    values = array.flatten().to_numpy(zero_copy_only=False)
    return values.reshape(len(array), size[0], size[1], 3)
