"""What every router of the app shares (``ServeContext``), and the small helpers they all use.

One ``ServeContext`` per app, built by ``create_app`` and kept at ``app.state.ctx``: the Searcher, the
settings, the micro-batcher (the only way to the Searcher's FAISS index and encoder), the decode budget,
the thumbnail cache, the token, and what was learnt at start (the encoder's problem, its input size).
"""

import base64
import binascii
import datetime
import decimal
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor

from pipeline.encode.preprocess import BadImage
from pipeline.serve.batcher import MicroBatcher
from pipeline.serve.images import DRAFT_FACTOR, DecodeBudget, ImageTooLarge, decode_within
from pipeline.serve.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from pipeline.config import ServeConfig
    from pipeline.search import Searcher
    from pipeline.serve.file_check import FileCheck
    from pipeline.serve.routes.map import MapState

ID_CONVERTOR = "latent_id"  # {id:latent_id}: see AnyTextConvertor


def json_safe(value: Any) -> Any:
    """A metadata value as JSON can carry it (Arrow rows hold bytes, dates, decimals, NaN…)."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return float(value) if value.is_finite() else None
    return str(value)


def metadata_of(row: dict[str, Any]) -> dict[str, Any]:
    """A hit's metadata: its row of items.arrow without the id and score, JSON-safe."""
    return {key: json_safe(value) for key, value in row.items() if key not in ("id", "score")}


class AnyTextConvertor(Convertor[str]):
    """``{id:anything}``: the rest of the path, newlines included (Starlette's ``path`` stops at a newline)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


def register_id_convertor() -> None:
    if ID_CONVERTOR not in CONVERTOR_TYPES:
        register_url_convertor(ID_CONVERTOR, AnyTextConvertor())


def url_of(route: str, id: str) -> str:
    """``route/ID`` with every character of the id percent-encoded (``/``, ``?``, ``#``, ``%``, newlines…).

    The ids a URL path cannot carry (``""``, ``.``, ``..``: clients drop or resolve dot segments, even encoded)
    get the query form ``route?id=ID``, which every route with an id also answers.
    """
    if id in ("", ".", ".."):
        return f"{route}?id={quote(id, safe='')}"
    return f"{route}/{quote(id, safe='')}"


def decode_base64_image(text: str, images: DecodeBudget, max_pixels: int, min_side: int) -> Image.Image:
    """The ``image`` field (base64 or a data: URL) as an RGB image, decoded within the budget (images.py).

    400 for what is not a usable image or is over ``max_pixels`` (from its header); DecodersBusy past the
    budget's slots.
    """
    if text.startswith("data:"):
        _, _, text = text.partition(",")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        raise HTTPException(400, f"image: not valid base64 ({err})") from err
    return decode_image_bytes(data, images, max_pixels, min_side)


def decode_image_bytes(data: bytes, images: DecodeBudget, max_pixels: int, min_side: int) -> Image.Image:
    """Encoded image bytes as an RGB image within the decode budget; 400 for what is not a usable image."""
    try:
        with images.slot():
            return decode_within(data, max_pixels, min_side)
    except ImageTooLarge as err:
        raise HTTPException(400, f"image ({len(data)} bytes): {err} (max_query_pixels)") from err
    except BadImage as err:
        raise HTTPException(400, f"image ({len(data)} bytes): not a usable image: {err}") from err


@dataclass
class ServeContext:
    """The state the routers share; one per app (``app.state.ctx``)."""

    searcher: "Searcher"
    cfg: "ServeConfig"
    batcher: MicroBatcher
    decodes: DecodeBudget
    thumbnails: ThumbnailCache
    token: str | None
    fingerprint: dict[str, Any] | None
    encoder_error: str | None = None  # why text and image queries are refused (None: they are answered)
    map: "MapState | None" = None
    map_missing: str | None = None  # why a map found beside the index is not served (stale: append to it)
    files: "FileCheck | None" = None  # the background sha256 check of the index's files (file_check.py)
    _input_side: int | None = field(default=None, repr=False)

    async def input_side(self) -> int:
        """The long side of the model's input, in pixels (builds the encoder if it is not built yet)."""
        if self._input_side is None:
            # read in the batcher's thread: a remote encoder (Ray Serve) answers synchronously
            searcher = self.searcher
            self._input_side = await self.batcher.call(lambda: max(searcher.encoder.prep.size))
        return self._input_side

    async def decode_query_image(self, text: str) -> Image.Image:
        """A query's ``image`` field, decoded in a thread within the decode budget and max_query_pixels."""
        min_side = DRAFT_FACTOR * await self.input_side()
        return await run_in_threadpool(decode_base64_image, text, self.decodes, self.cfg.max_query_pixels, min_side)

    def thumbnail_url(self, request: Request, id: str) -> str:
        return f"{request.scope.get('root_path', '')}{url_of('/thumbnails', id)}"
