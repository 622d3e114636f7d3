"""``POST /search`` (a text, an image, a vector or an indexed item's id) and ``GET /healthz``."""

# no `from __future__ import annotations`: FastAPI must see the real type of the request model built here
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool

from pipeline import __version__
from pipeline.serve.context import ServeContext, metadata_of
from pipeline.serve.fast_json import FastJSONRoute, json_response
from pipeline.serve.images import TRIM_ABOVE_PIXELS, release_memory
from pipeline.serve.models import (
    API_VERSION,
    ERRORS,
    Column,
    Columns,
    ErrorBody,
    Health,
    SearchQuery,
    SearchResponse,
    search_query_model,
)

QUERY_FIELDS = ("text", "image", "vector", "id")
KIND_OF = {"text": "texts", "image": "images", "vector": "vectors", "id": "ids"}  # the batcher's kinds


def check_vector(value: Any, name: str = "vector") -> np.ndarray:
    """A query vector as float32; 400 for values past float32's range or all zeros."""
    with np.errstate(over="ignore"):
        vector = np.asarray(value, dtype=np.float32)
    if not np.isfinite(vector).all():
        raise HTTPException(400, f"{name}: values outside the float32 range")
    if not vector.any():
        raise HTTPException(400, f"{name}: all zeros (a zero vector has no direction)")
    return vector


def router(ctx: ServeContext) -> APIRouter:
    """The search and health routes of ``ctx``'s app."""
    api = APIRouter(route_class=FastJSONRoute)  # the body parsed by pydantic-core: fast_json.py
    SearchRequest = search_query_model(ctx.cfg.max_k, ctx.cfg.default_k, ctx.searcher.dim)

    @api.post(
        "/search",
        response_model=SearchResponse,
        responses={**ERRORS, 404: {"model": ErrorBody, "description": "search by an id the index does not hold"}},
        summary="The k nearest items to a text, an image, a vector or an indexed item",
    )
    async def search(body: SearchRequest, request: Request) -> Response:  # type: ignore[valid-type]
        started = time.perf_counter()
        query: SearchQuery = body
        given = [name for name in QUERY_FIELDS if getattr(query, name) is not None]
        if len(given) != 1:
            got = ", ".join(given) or "none"
            raise HTTPException(400, f"give exactly one of {', '.join(QUERY_FIELDS)} (got {got})")
        field = given[0]
        value: Any = getattr(query, field)
        if field in ("text", "image") and ctx.encoder_error:
            raise HTTPException(400, f"{field} queries are not available on this server: {ctx.encoder_error}")
        if field == "text" and not value.strip():
            raise HTTPException(400, "text: empty query")
        if field == "id" and not value:
            raise HTTPException(400, "id: empty")
        if field == "image":
            value = await ctx.decode_query_image(value)
        if field == "vector":
            value = check_vector(value)
        hits, plan = await ctx.batcher.search_planned(KIND_OF[field], value, query.k, query.where)
        if field == "image" and value.width * value.height > TRIM_ABOVE_PIXELS:
            del value  # the last reference: give its pixels back to the OS
            await run_in_threadpool(release_memory)
        hits = [row for row in hits if row.get("id") is not None]  # only real hits (a label of -1 is an all-null row)
        # SearchResponse's fields, written directly: FastAPI's response_model validation and json.dumps cost
        # more per query than the JSON itself (fast_json.py); the schema in /openapi.json is SearchResponse's
        return json_response(
            {
                "query": field,
                "k": query.k,
                "hits": [
                    {
                        "id": row["id"],
                        "score": float(row["score"]),
                        "rank": rank,
                        "metadata": metadata_of(row),
                        "thumbnail": ctx.thumbnail_url(request, row["id"]),
                    }
                    for rank, row in enumerate(hits, start=1)
                ],
                "took_ms": round((time.perf_counter() - started) * 1000, 3),
                "plan": plan,  # the filtered plan (SearchPlan), None without where; an unbounded cost is null
            }
        )

    @api.get("/columns", response_model=Columns, summary="The metadata columns a where= predicate can name")
    def columns() -> Columns:
        kinds = ctx.searcher.columns.kinds  # index.json's metadata schema: nothing is read
        return Columns(columns=[Column(name=name, kind=kind) for name, kind in sorted(kinds.items())])

    @api.get("/healthz", response_model=Health, summary="Liveness, the API version and what the index holds")
    def healthz() -> Health:
        searcher, cfg = ctx.searcher, ctx.cfg
        encoded = [] if ctx.encoder_error else ["text", "image"]
        return Health(
            status="ok",
            api_version=API_VERSION,
            latent_version=__version__,
            ntotal=searcher.ntotal,
            dim=searcher.dim,
            metric=searcher.info.metric,
            factory=searcher.info.factory,
            model=(ctx.fingerprint or {}).get("name"),
            queries=[*encoded, "vector", "id"],
            text_queries_unavailable=ctx.encoder_error,
            max_k=cfg.max_k,
            default_k=cfg.default_k,
            max_body_bytes=cfg.max_body_bytes,
            auth_required=ctx.token is not None,
            batches=dict(ctx.batcher.stats.batches),
            batched_queries=dict(ctx.batcher.stats.queries),
            files=ctx.files.report() if ctx.files is not None else None,
        )

    return api
