"""The FastAPI app of `latent serve`: /search, /items/{id}, /thumbnails/{id}, /healthz and the web page at /.

``create_app(searcher, cfg)`` builds it around an open Searcher; every query goes through the
micro-batcher's single worker thread (the Searcher is not thread-safe), item and thumbnail reads run
in Starlette's thread pool (IndexDirectory reads are). Every way a request can be wrong is answered
with a 4xx and a message (docs/http-api.md).
"""

# no `from __future__ import annotations`: FastAPI must see the real type of the request model built in create_app
import base64
import binascii
import datetime
import decimal
import logging
import math
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.convertors import CONVERTOR_TYPES, Convertor, register_url_convertor

from pipeline import __version__
from pipeline.encode.preprocess import BadImage
from pipeline.errors import LatentError, ServiceUnavailable
from pipeline.serve.auth import check_origins, load_token, protect
from pipeline.serve.batcher import MicroBatcher, UnknownItem
from pipeline.serve.file_check import attach_file_check
from pipeline.serve.images import (
    DRAFT_FACTOR,
    TRIM_ABOVE_PIXELS,
    DecodeBudget,
    DecodersBusy,
    ImageTooLarge,
    decode_within,
    release_memory,
)
from pipeline.serve.models import (
    API_VERSION,
    ERRORS,
    ErrorBody,
    Health,
    Hit,
    Item,
    SearchQuery,
    SearchResponse,
    search_query_model,
)
from pipeline.serve.thumbnails import NoThumbnail, ThumbnailCache, make_thumbnail, read_source_image

if TYPE_CHECKING:
    from pipeline.config import ServeConfig
    from pipeline.search import Searcher

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
QUERY_FIELDS = ("text", "image", "vector", "id")
KIND_OF = {"text": "texts", "image": "images", "vector": "vectors", "id": "ids"}  # the batcher's kinds
THUMBNAIL_WAIT_S = 10.0  # a thumbnail request waits this long for a decode slot, then gets 503
ID_CONVERTOR = "latent_id"  # {id:latent_id}: see AnyTextConvertor


class BodyLimit:
    """ASGI middleware: 413 for a body over ``max_bytes``, by its Content-Length or as it streams in."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            response = JSONResponse({"detail": self._message()}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked body: FastAPI turns this into the response
                raise HTTPException(413, self._message())
            return message

        await self.app(scope, limited, send)

    def _message(self) -> str:
        return f"request body larger than max_body_bytes={self.max_bytes}"


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
    try:
        with images.slot():
            return decode_within(data, max_pixels, min_side)
    except ImageTooLarge as err:
        raise HTTPException(400, f"image ({len(data)} bytes): {err} (max_query_pixels)") from err
    except BadImage as err:
        raise HTTPException(400, f"image ({len(data)} bytes): not a usable image: {err}") from err


class AnyTextConvertor(Convertor[str]):
    """``{id:anything}``: the rest of the path, newlines included (Starlette's ``path`` stops at a newline)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return quote(value, safe="")


def url_of(route: str, id: str) -> str:
    """``route/ID`` with every character of the id percent-encoded (``/``, ``?``, ``#``, ``%``, newlines…).

    The ids a URL path cannot carry (``""``, ``.``, ``..``: clients drop or resolve dot segments, even encoded)
    get the query form ``route?id=ID``, which every route with an id also answers.
    """
    if id in ("", ".", ".."):
        return f"{route}?id={quote(id, safe='')}"
    return f"{route}/{quote(id, safe='')}"


def create_app(searcher: "Searcher", cfg: "ServeConfig") -> FastAPI:
    """The app serving ``searcher`` with the limits of ``cfg``."""
    if ID_CONVERTOR not in CONVERTOR_TYPES:
        register_url_convertor(ID_CONVERTOR, AnyTextConvertor())
    batcher = MicroBatcher(searcher, max_batch=cfg.max_batch, wait_s=cfg.batch_wait_ms / 1000)
    thumbnails = ThumbnailCache(cfg.thumbnail_cache)
    token = load_token(cfg.auth.token, cfg.auth.token_file)
    origins = check_origins(cfg.cors.origins)
    decodes = DecodeBudget(cfg.max_decodes, cfg.decode_retry_after_s)  # query images and thumbnails alike
    state: dict[str, Any] = {"encoder_error": None, "input_side": None}
    fingerprint = searcher.info.embedding.model if searcher.info.embedding is not None else None
    SearchRequest = search_query_model(cfg.max_k, cfg.default_k, searcher.dim)

    async def input_side() -> int:
        """The long side of the model's input, in pixels (builds the encoder if it is not built yet)."""
        if state["input_side"] is None:
            # read in the batcher's thread: a remote encoder (Ray Serve) answers synchronously
            state["input_side"] = await batcher.call(lambda: max(searcher.encoder.prep.size))
        return state["input_side"]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await batcher.start()
        files.start()  # every index file hashed in the background: a damaged one turns queries into 503s
        if not fingerprint:
            state["encoder_error"] = "the index has no model fingerprint: it answers vector and id queries only"
        elif cfg.warmup:  # build the encoder now: the first query is not slow, and a bad model shows at start
            try:
                await input_side()
            except LatentError as err:
                state["encoder_error"] = str(err)
                log.warning("text and image queries disabled: %s", err)
        yield
        await batcher.stop()

    app = FastAPI(
        title="latent",
        version=API_VERSION,
        summary="Semantic search over a latent index directory",
        description="See docs/http-api.md. Hits are ranked best first.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: the page must work offline
        redoc_url=None,
    )
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_bytes)
    protect(app, token, origins)  # auth.py: the bearer token, and CORS outside it
    app.state.batcher = batcher
    app.state.decodes = decodes
    files = attach_file_check(app, searcher)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, which can be NaN (not JSON: a 500) or megabytes of base64
        errors = [{key: json_safe(e.get(key)) for key in ("type", "loc", "msg")} for e in err.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(UnknownItem)
    async def unknown_item(request: Request, err: UnknownItem) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.exception_handler(DecodersBusy)
    async def busy(request: Request, err: DecodersBusy) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": str(err.retry_after_s)})

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, err: ServiceUnavailable) -> JSONResponse:
        # a sharded index on Ray Serve: never a partial answer; the message names the missing shards
        return JSONResponse({"detail": str(err)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(LatentError)
    async def bad_query(request: Request, err: LatentError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    async def decode_query_image(text: str) -> Image.Image:
        """A query's ``image`` field, decoded in a thread within the decode budget and max_query_pixels."""
        min_side = DRAFT_FACTOR * await input_side()
        return await run_in_threadpool(decode_base64_image, text, decodes, cfg.max_query_pixels, min_side)

    def thumbnail_url(request: Request, id: str) -> str:
        return f"{request.scope.get('root_path', '')}{url_of('/thumbnails', id)}"

    def metadata_of(row: dict[str, Any]) -> dict[str, Any]:
        return {key: json_safe(value) for key, value in row.items() if key not in ("id", "score")}

    @app.post(
        "/search",
        response_model=SearchResponse,
        responses={**ERRORS, 404: {"model": ErrorBody, "description": "search by an id the index does not hold"}},
        summary="The k nearest items to a text, an image, a vector or an indexed item",
    )
    async def search(body: SearchRequest, request: Request) -> SearchResponse:  # type: ignore[valid-type]
        started = time.perf_counter()
        query: SearchQuery = body
        given = [name for name in QUERY_FIELDS if getattr(query, name) is not None]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise HTTPException(400, f"give exactly one of {', '.join(QUERY_FIELDS)} (got {got})")
        field = given[0]
        value: Any = getattr(query, field)
        if field in ("text", "image") and state["encoder_error"]:
            raise HTTPException(400, f"{field} queries are not available on this server: {state['encoder_error']}")
        if field == "text" and not value.strip():
            raise HTTPException(400, "text: empty query")
        if field == "id" and not value:
            raise HTTPException(400, "id: empty")
        if field == "image":
            value = await decode_query_image(value)
        if field == "vector":
            with np.errstate(over="ignore"):
                value = np.asarray(value, dtype=np.float32)
            if not np.isfinite(value).all():
                raise HTTPException(400, "vector: values outside the float32 range")
            if not value.any():
                raise HTTPException(400, "vector: all zeros (a zero vector has no direction)")
        hits = await batcher.search(KIND_OF[field], value, query.k, query.where)
        if field == "image" and value.width * value.height > TRIM_ABOVE_PIXELS:
            del value  # the last reference: give its pixels back to the OS
            await run_in_threadpool(release_memory)
        hits = [row for row in hits if row.get("id") is not None]  # only real hits (a label of -1 is an all-null row)
        return SearchResponse(
            query=field,
            k=query.k,
            hits=[
                Hit(
                    id=row["id"],
                    score=row["score"],
                    rank=rank,
                    metadata=metadata_of(row),
                    thumbnail=thumbnail_url(request, row["id"]),
                )
                for rank, row in enumerate(hits, start=1)
            ],
            took_ms=round((time.perf_counter() - started) * 1000, 3),
        )

    def item(id: str, request: Request) -> Item:
        row = searcher.item(id)
        if row is None:
            raise HTTPException(404, f"no item with id {id!r} in the index")
        return Item(id=row["id"], metadata=metadata_of(row), thumbnail=thumbnail_url(request, row["id"]))

    def thumbnail(id: str) -> Response:
        data = thumbnails.get(id)
        if data is None:
            row = searcher.item(id)
            if row is None:
                raise HTTPException(404, f"no item with id {id!r} in the index")
            try:
                source = read_source_image(row.get("source"))
                with decodes.slot(wait_s=THUMBNAIL_WAIT_S):  # a page asks for many at once: they queue briefly
                    data = make_thumbnail(source, cfg.thumbnail_size, cfg.max_image_pixels)
            except NoThumbnail as err:
                raise HTTPException(404, f"no thumbnail for {id!r}: {err}") from err
            thumbnails.put(id, data)
        cache = "private, max-age=3600" if token else "public, max-age=3600"  # shared caches: no authorized answers
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})

    item_doc = {
        "response_model": Item,
        "responses": {404: {"model": ErrorBody, "description": "the index holds no item with this id"}},
        "summary": "An indexed item's metadata, by id",
    }
    thumbnail_doc = {
        "response_class": Response,
        "responses": {
            200: {"content": {"image/jpeg": {}}, "description": "a JPEG, at most thumbnail_size on its long side"},
            404: {"model": ErrorBody, "description": "unknown id, or the item has no readable image"},
        },
        "summary": "A downscaled JPEG of an indexed item's image, by id",
    }
    # the id in the path, percent-encoded (any characters), or as ?id= (also ids a path cannot carry: "", ".", "..")
    app.get("/items/{id:latent_id}", **item_doc)(item)
    app.get("/items", **item_doc)(item)
    app.get("/thumbnails/{id:latent_id}", **thumbnail_doc)(thumbnail)
    app.get("/thumbnails", **thumbnail_doc)(thumbnail)

    @app.get("/healthz", response_model=Health, summary="Liveness, the API version and what the index holds")
    def healthz() -> Health:
        encoded = [] if state["encoder_error"] else ["text", "image"]
        return Health(
            status="ok",
            api_version=API_VERSION,
            latent_version=__version__,
            ntotal=searcher.ntotal,
            dim=searcher.dim,
            metric=searcher.info.metric,
            factory=searcher.info.factory,
            model=(fingerprint or {}).get("name"),
            queries=[*encoded, "vector", "id"],
            text_queries_unavailable=state["encoder_error"],
            max_k=cfg.max_k,
            default_k=cfg.default_k,
            max_body_bytes=cfg.max_body_bytes,
            auth_required=token is not None,
            batches=dict(batcher.stats.batches),
            batched_queries=dict(batcher.stats.queries),
            files=files.report(),
        )

    from pipeline.serve.map_routes import attach_map

    helpers = {"thumbnail_url": thumbnail_url, "metadata_of": metadata_of, "decode_image": decode_query_image}
    attach_map(app, searcher, cfg, batcher, helpers)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
