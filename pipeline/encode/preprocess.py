"""Image decoding and open_clip's eval transform, split at the uint8/float boundary.

open_clip's transform is PIL steps (resize, crop, RGB) followed by ToTensor and Normalize. The
PIL steps run in CPU decode tasks and yield uint8 arrays (4x smaller than float32 to move); the
encoder finishes with ``to_tensor_normalized``, which is the exact arithmetic of ToTensor and
Normalize, so vectors equal ``model.encode_image(preprocess(img))``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

from pipeline.errors import describe_error

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # Pillow's modes of 16-bit greyscale (PNG)
DRAFT_MARGIN = 2  # draft decoding keeps >= this many times the resize's output size: the exact resize still shrinks


class BadImage(ValueError):
    """An input that is not a usable image; the row is recorded as an error."""


@dataclass
class ImagePrep:
    """The PIL part of an open_clip eval transform plus the normalisation the encoder applies."""

    pil_steps: object  # torchvision Compose of PIL -> PIL steps
    mean: tuple[float, ...]
    std: tuple[float, ...]
    size: tuple[int, int]
    draft: bool = False  # decode large JPEGs at a reduced DCT scale first (decode.draft)

    @classmethod
    def from_transform(cls, transform, draft: bool = False) -> ImagePrep:
        from torchvision.transforms import Compose, Normalize

        steps = list(transform.transforms)
        names = [type(t).__name__ for t in steps]
        if names[-2:] != ["MaybeToTensor", "Normalize"] and names[-2:] != ["ToTensor", "Normalize"]:
            raise ValueError(f"unexpected open_clip transform layout: {names}")
        norm: Normalize = steps[-1]
        crop = next(t for t in steps if type(t).__name__ == "CenterCrop")
        return cls(Compose(steps[:-2]), tuple(norm.mean), tuple(norm.std), tuple(crop.size), draft)

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) that the transform's first resize step gives an image of this size."""
        from open_clip.transform import ResizeKeepRatio
        from torchvision.transforms import Resize
        from torchvision.transforms.functional import _compute_resized_output_size

        for step in self.pil_steps.transforms:
            if isinstance(step, Resize):
                size = [step.size] if isinstance(step.size, int) else list(step.size)
                h, w = _compute_resized_output_size((height, width), size, step.max_size)
                return w, h
            if isinstance(step, ResizeKeepRatio):
                h, w = keep_ratio_size(height, width, step.size, step.longest)
                return w, h
        return width, height

    def draft_request(self, width: int, height: int) -> tuple[int, int] | None:
        """The size to ask Pillow's JPEG ``draft`` for, or None when the image is not large enough to gain."""
        w, h = self.resized_size(width, height)
        want = (w * DRAFT_MARGIN, h * DRAFT_MARGIN)
        return want if width >= 2 * want[0] and height >= 2 * want[1] else None

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


def keep_ratio_size(height: int, width: int, target: tuple[int, int], longest: float) -> list[int]:
    """open_clip's ResizeKeepRatio.get_params without its random parts (eval transforms have none)."""
    ratio_h, ratio_w = height / target[0], width / target[1]
    ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
    return [round(height / ratio), round(width / ratio)]


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


def decode_image(
    data: bytes, max_pixels: int, draft: Callable[[int, int], tuple[int, int] | None] | None = None
) -> Image.Image:
    """Open image bytes (first frame of animations), refusing empty, broken and huge images; 16 bits -> 8.

    ``draft`` (ImagePrep.draft_request): for a JPEG, the size to decode at least, at a reduced DCT scale."""
    image = open_image(data, max_pixels)
    try:
        if draft is not None and image.format == "JPEG" and (request := draft(*image.size)):
            image.draft(image.mode, request)
        image.load()
        return to_8bit(image)
    except Exception as err:  # PIL raises many types for broken files
        raise BadImage(f"cannot decode image: {describe_error(err)}") from err


def prepare_records(
    records: pa.Table, prep: ImagePrep | None, needs_text: bool, max_pixels: int, keep_bytes: bool = False
) -> pa.Table:
    """Records (with image bytes) -> rows ready to encode: ``pixels`` (uint8, flattened) replaces ``image``.

    Rows that cannot be used get an ``error`` and zero pixels; they flow on to be recorded, not dropped.
    ``keep_bytes``: leave ``image`` as it is, for an encoder that decodes itself (gpu_decode).
    """
    errors = records.column("error").to_pylist()
    if keep_bytes:
        prep = None
        table = records
    else:
        table = records.drop_columns(["image"])
    if prep is not None:
        height, width = prep.size
        pixels = np.zeros((records.num_rows, height, width, 3), dtype=np.uint8)
        for i, data in enumerate(records.column("image").to_pylist()):
            if errors[i] is not None:
                continue
            try:
                pixels[i] = prep.prepare(decode_image(data, max_pixels, prep.draft_request if prep.draft else None))
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
