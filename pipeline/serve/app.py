"""The FastAPI app of `latent serve`: /search, /items/{id}, /thumbnails/{id}, /healthz, the map, the
clip-retrieval routes and the web page at /.

``create_app(searcher, cfg)`` builds a ServeContext (context.py) around an open Searcher and includes one
router per concern (routes/). Every query goes through the micro-batcher's single worker thread (the
Searcher is not thread-safe); item and thumbnail reads run in Starlette's thread pool (IndexDirectory
reads are). Every way a request can be wrong is answered with a 4xx and a message (docs/http-api.md).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import anyio.to_thread
from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from pipeline.errors import LatentError, ServiceUnavailable
from pipeline.serve.auth import check_origins, load_token, protect
from pipeline.serve.batcher import MicroBatcher, UnknownItem
from pipeline.serve.context import ServeContext, json_safe, register_id_convertor
from pipeline.serve.file_check import attach_file_check
from pipeline.serve.images import DecodeBudget, DecodersBusy
from pipeline.serve.models import API_VERSION
from pipeline.serve.routes import clip, items, map, map_filter, page, search
from pipeline.serve.routes.page import STATIC_DIR
from pipeline.serve.thumbnails import ThumbnailCache

if TYPE_CHECKING:
    from pipeline.config import ServeConfig
    from pipeline.search import Searcher

log = logging.getLogger(__name__)


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


def add_error_handlers(app: FastAPI) -> None:
    """The answers to what a route raises: 422 (without echoing the input), 404, 503 + Retry-After, 400."""

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

    @app.exception_handler(RuntimeError)
    async def no_thread(request: Request, err: RuntimeError) -> JSONResponse:
        # under an address-space or process limit (ulimit -v / -u) a new thread's stack cannot be mapped: the
        # request is fine and the server is not broken, so 503 with the reason; any other RuntimeError is a bug
        if "can't start new thread" not in str(err):
            raise err
        log.warning("a request could not get a thread: %s", err)
        detail = (
            "the server could not start a thread for this request (its memory or thread limit, e.g. ulimit -v, "
            "is reached); retry shortly, or serve with a lower max_threads / a higher limit"
        )
        return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


def create_app(searcher: Searcher, cfg: ServeConfig) -> FastAPI:
    """The app serving ``searcher`` with the limits of ``cfg``."""
    register_id_convertor()
    why: list[str] = []  # why a map beside the index is left out
    ctx = ServeContext(
        searcher=searcher,
        cfg=cfg,
        batcher=MicroBatcher(searcher, cfg.max_batch, cfg.batch_wait_ms / 1000, threads=cfg.search_threads),
        decodes=DecodeBudget(cfg.max_decodes, cfg.decode_retry_after_s),  # query images and thumbnails alike
        thumbnails=ThumbnailCache(cfg.thumbnail_cache),
        token=load_token(cfg.auth.token, cfg.auth.token_file),
        fingerprint=searcher.info.embedding.model if searcher.info.embedding is not None else None,
        map=map.load_map(searcher, cfg, why),
        map_missing=why[0] if why else None,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # a bounded pool for sync routes and run_in_threadpool (AnyIO's default is 40 threads)
        anyio.to_thread.current_default_thread_limiter().total_tokens = cfg.max_threads
        await ctx.batcher.start()
        if ctx.files is not None:
            ctx.files.start()  # every index file hashed in the background: a damaged one turns queries into 503s
        if not ctx.fingerprint:
            ctx.encoder_error = "the index has no model fingerprint: it answers vector and id queries only"
        elif cfg.warmup:  # build the encoder now: the first query is not slow, and a bad model shows at start
            try:
                await ctx.input_side()
            except LatentError as err:
                ctx.encoder_error = str(err)
                log.warning("text and image queries disabled: %s", err)
        yield
        await ctx.batcher.stop()

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
    protect(app, ctx.token, check_origins(cfg.cors.origins))  # auth.py: the bearer token, and CORS outside it
    ctx.files = attach_file_check(app, searcher)
    app.state.ctx = ctx
    app.state.batcher = ctx.batcher
    app.state.decodes = ctx.decodes
    app.state.map = ctx.map
    add_error_handlers(app)
    app.include_router(search.router(ctx))
    app.include_router(items.router(ctx))
    app.include_router(map.router(ctx))
    app.include_router(map_filter.router(ctx))
    app.include_router(clip.router(ctx))
    app.include_router(page.router())
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
