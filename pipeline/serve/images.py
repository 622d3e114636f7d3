"""Images decoded within a memory budget: the serve app's query images and thumbnails (docs/http-api.md).

A 13 KB PNG can hold 9000x9000 pixels, 400 MB once decoded. So, before any pixel is decoded, the size
in the header is checked against the limit; JPEGs are decoded at a reduced DCT scale (Pillow's
``draft``) that still leaves the model several times its input size; at most ``slots`` decodes run at
once (past that: DecodersBusy, a 503 with Retry-After); and after a large decode the freed memory is
handed back to the operating system (glibc keeps it in its arenas otherwise, for good).

Nothing here depends on FastAPI: any ingress (uvicorn, Ray Serve) can use it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import io
import threading
from collections.abc import Callable, Iterator

from PIL import Image

from pipeline.encode.preprocess import BadImage, to_8bit
from pipeline.errors import describe_error

DRAFT_FACTOR = 4  # JPEGs decode at the smallest scale keeping this many times the model's input size
TRIM_ABOVE_PIXELS = 2_000_000  # decodes this large give their memory back to the OS when done


class ImageTooLarge(BadImage):
    """More pixels than the limit, known from the header: nothing was decoded."""


class DecodersBusy(Exception):
    """Every decode slot is taken: the client should retry after ``retry_after_s`` seconds."""

    def __init__(self, slots: int, retry_after_s: int) -> None:
        super().__init__(
            f"busy: {slots} image decodes already running (max_decodes={slots}); retry in {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class DecodeBudget:
    """At most ``slots`` decodes at once, across threads; past that, DecodersBusy (or a bounded wait)."""

    def __init__(self, slots: int, retry_after_s: int) -> None:
        if slots <= 0:
            raise ValueError(f"slots={slots}: must be positive")
        self.slots = slots
        self.retry_after_s = retry_after_s
        self._free = threading.BoundedSemaphore(slots)

    @contextlib.contextmanager
    def slot(self, wait_s: float = 0.0) -> Iterator[None]:
        """Hold one decode slot; DecodersBusy when none frees up within ``wait_s`` (0: do not wait)."""
        acquired = self._free.acquire(timeout=wait_s) if wait_s > 0 else self._free.acquire(blocking=False)
        if not acquired:
            raise DecodersBusy(self.slots, self.retry_after_s)
        try:
            yield
        finally:
            self._free.release()


def open_within(data: bytes, max_pixels: int, min_side: int | None = None, what: str = "image") -> Image.Image:
    """Image bytes opened, not decoded: its size checked from the header, JPEGs set to decode reduced.

    ``min_side``: JPEGs decode at the smallest DCT scale (1/2, 1/4, 1/8) that keeps both sides at least
    this long; the pixel limit applies to the size that will be decoded.
    """
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size  # the header's: nothing decoded yet
        if min_side and image.format == "JPEG":
            image.draft("RGB", (min_side, min_side))  # sets the decoder's scale; image.size is the reduced one
    except Image.DecompressionBombError as err:  # Pillow's own guard, where the process keeps it
        raise ImageTooLarge(f"{what} too large for Pillow's MAX_IMAGE_PIXELS: {describe_error(err)}") from err
    except Exception as err:  # PIL raises many types for broken files
        raise BadImage(f"cannot decode image: {describe_error(err)}") from err
    pixels = image.size[0] * image.size[1]
    if pixels > max_pixels:
        raise ImageTooLarge(
            f"{what} too large: {width}x{height} pixels ({pixels / 1e6:.1f} megapixels decoded) > {max_pixels:,}; "
            "send it scaled down (a few times the model's input size is plenty)"
        )
    return image


def decode_within(data: bytes, max_pixels: int, min_side: int | None = None) -> Image.Image:
    """Encoded image bytes -> an RGB image of at most ``max_pixels`` decoded pixels (see ``open_within``).

    An image whose short side is over ``min_side`` is then reduced (box filter, integer factor) so that
    it stays at least ``min_side``: what waits for the encoder is small.
    """
    image = open_within(data, max_pixels, min_side, "query image")
    large = image.size[0] * image.size[1] > TRIM_ABOVE_PIXELS
    try:
        image.load()
        image = to_8bit(image).convert("RGB")  # 16-bit PNGs: scaled, not clipped to white
        if min_side and (factor := min(image.size) // min_side) >= 2:
            image = image.reduce(factor)
        return image
    except BadImage:
        raise
    except Exception as err:
        raise BadImage(f"cannot decode image: {describe_error(err)}") from err
    finally:
        if large:  # the full-size pixels are garbage now (or were never used)
            del image
            release_memory()


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, or None (musl, macOS, Windows: nothing to call)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_memory() -> bool:
    """Hand freed heap memory back to the OS (glibc: every arena, not only the main one); False if not glibc."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
