"""clip-retrieval's back-end API (``clip-retrieval back``), so its ``ClipClient`` and its web front-end work
against `latent serve` unchanged: ``POST /knn-service``, ``GET /indices-list``, ``POST /metadata``.

The mapping and its limits are in docs/http-api.md ("clip-retrieval's API"). In short: the served index
is the one "indice" (named after its directory); a result's ``id`` is its FAISS label (an integer, as
clip-retrieval's), its latent id is ``latent_id``; ``url`` and ``caption`` come from the item's columns
of the same name, else its thumbnail URL and its ``text``; the safety, violence, aesthetic and mclip
fields are accepted and ignored (the ``X-Latent-Note`` header says so); ``image_url`` is refused (the
server fetches no URL).
"""

# no `from __future__ import annotations`: FastAPI must see the request models' real types
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pipeline.serve.context import ServeContext, json_safe
from pipeline.serve.fast_json import json_response
from pipeline.serve.models import ERRORS
from pipeline.serve.routes.search import check_vector

DUPLICATE_COSINE = 0.94  # clip-retrieval's threshold: results closer than this to a better one are dropped
IGNORED = ("use_safety_model", "use_violence_detector", "aesthetic_score", "aesthetic_weight", "use_mclip")
FIELDS_OF_ITEM = ("url", "caption")


class KnnQuery(BaseModel):
    """clip-retrieval's /knn-service body: one of text, image (base64), image_url, embedding_input."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    text: str | None = None
    image: str | None = Field(None, description="base64 of an encoded image")
    image_url: str | None = Field(None, description="refused: this server fetches no URL (send `image`)")
    embedding_input: list[float] | None = None
    modality: str = Field("image", description="accepted; the served index answers both (one index per directory)")
    num_images: int = Field(40, ge=0, description="results with their metadata")
    num_result_ids: int | None = Field(None, ge=0, description="results in all (the rest: id and similarity)")
    indice_name: str | None = None
    deduplicate: bool = False
    use_safety_model: bool | None = None
    use_violence_detector: bool | None = None
    aesthetic_score: int | str | None = None
    aesthetic_weight: float | str | None = None
    use_mclip: bool | None = None


class MetadataQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")
    ids: list[int]
    indice_name: str | None = None


def parse_body(model: type[BaseModel], data: bytes) -> Any:
    """A body as JSON whatever its Content-Type (clip-retrieval reads it with ``get_json(force=True)``, and its
    front-end posts JSON as text/plain); a 422 as for any other route when it does not fit ``model``."""
    try:
        return model.model_validate_json(data or b"{}")
    except ValidationError as err:
        raise RequestValidationError(err.errors(include_input=False)) from None


def body_of(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI entry of a body read by ``parse_body``."""
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}, "required": True}}


def indice_name(ctx: ServeContext) -> str:
    """The name the served index goes by in clip-retrieval's API: its directory's name."""
    return Path(ctx.searcher.directory.path).resolve().name or "latent"


def near_duplicates(vectors: np.ndarray) -> set[int]:
    """Positions of results within cosine DUPLICATE_COSINE of a better-ranked result that is kept."""
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    similar = unit @ unit.T >= DUPLICATE_COSINE
    dropped: set[int] = set()
    for i in range(len(unit)):
        if i not in dropped:
            dropped.update(j for j in np.flatnonzero(similar[i, i + 1 :]) + i + 1)
    return dropped


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter(tags=["clip-retrieval"])
    name = indice_name(ctx)
    directory = ctx.searcher.directory

    def check_indice(given: str | None) -> None:
        if given is not None and given != name:
            raise HTTPException(400, f"indice_name={given!r}: this server has one index, {name!r} (GET /indices-list)")

    def item_fields(request: Request, row: dict[str, Any]) -> dict[str, Any]:
        out = {key: json_safe(value) for key, value in row.items() if key not in ("id", "score")}
        out.setdefault("url", str(request.base_url).rstrip("/") + ctx.thumbnail_url(request, row["id"]))
        out.setdefault("caption", out.get("text"))
        out["latent_id"] = row["id"]
        return out

    @api.get("/indices-list", summary="clip-retrieval: the indices served (one: the index directory's name)")
    def indices_list() -> list[str]:
        return [name]

    @api.post(
        "/knn-service",
        responses=ERRORS,
        openapi_extra=body_of(KnnQuery),
        summary="clip-retrieval: nearest items to a text, image or vector",
    )
    async def knn_service(request: Request) -> Any:
        body: KnnQuery = parse_body(KnnQuery, await request.body())
        check_indice(body.indice_name)
        notes = [f"{key} ignored" for key in IGNORED if getattr(body, key) not in (None, False, "")]
        text = body.text if body.text else None  # clip-retrieval reads "" as no text
        given = [f for f, v in (("text", text), ("image", body.image), ("image_url", body.image_url),
                                ("embedding_input", body.embedding_input)) if v is not None]  # fmt: skip
        if not given:
            raise HTTPException(400, "give one of text, image, image_url, embedding_input")
        field = given[0]  # clip-retrieval's precedence: text, then image, then image_url, then the embedding
        if field == "image_url":
            raise HTTPException(400, "image_url: this server fetches no URL; send the image in base64 as `image`")
        if field in ("text", "image") and ctx.encoder_error:
            raise HTTPException(400, f"{field} queries are not available on this server: {ctx.encoder_error}")
        wanted = body.num_result_ids if body.num_result_ids is not None else body.num_images
        k = min(max(wanted, body.num_images), ctx.cfg.max_k, ctx.searcher.ntotal)
        if k < max(wanted, body.num_images):
            notes.append(f"results capped at max_k={ctx.cfg.max_k}")
        if k <= 0:
            return json_response([])
        if field == "text":
            rows = await ctx.batcher.search("texts", text, k)
        elif field == "image":
            rows = await ctx.batcher.search("images", await ctx.decode_query_image(body.image), k)
        else:
            if len(body.embedding_input) != ctx.searcher.dim:
                got, dim = len(body.embedding_input), ctx.searcher.dim
                raise HTTPException(400, f"embedding_input: {got} values, the index's vectors have {dim}")
            rows = await ctx.batcher.search("vectors", check_vector(body.embedding_input, "embedding_input"), k)
        rows = [row for row in rows if row.get("id") is not None]
        labels = await run_in_threadpool(directory.labels_of, [row["id"] for row in rows])
        if body.deduplicate and rows:
            vectors = await ctx.batcher.call(lambda: [ctx.searcher.vector(row["id"]) for row in rows])
            if any(v is None for v in vectors):
                notes.append("deduplicate ignored: this index cannot give back its vectors")
            else:
                dropped = near_duplicates(np.stack(vectors))
                rows = [row for i, row in enumerate(rows) if i not in dropped]
                labels = [label for i, label in enumerate(labels) if i not in dropped]
        results = []
        for rank, (row, label) in enumerate(zip(rows, labels)):
            result = item_fields(request, row) if rank < body.num_images else {}
            result["id"] = int(label)
            result["similarity"] = float(row["score"])
            results.append(result)
        headers = {"X-Latent-Note": "; ".join(notes)} if notes else None
        return json_response(results, headers=headers)

    @api.post(
        "/metadata",
        responses=ERRORS,
        openapi_extra=body_of(MetadataQuery),
        summary="clip-retrieval: the metadata of results by their integer id",
    )
    async def metadata(request: Request) -> list[dict[str, Any]]:
        body: MetadataQuery = parse_body(MetadataQuery, await request.body())
        return await run_in_threadpool(metadata_of_ids, body, request)

    def metadata_of_ids(body: MetadataQuery, request: Request) -> list[dict[str, Any]]:
        check_indice(body.indice_name)
        if not body.ids:
            return []
        if len(body.ids) > 10_000:
            raise HTTPException(400, f"ids: {len(body.ids)} given, at most 10000 per request")
        bad = [i for i in body.ids if not 0 <= i < ctx.searcher.ntotal]
        if bad:
            raise HTTPException(400, f"ids: {bad[0]} is not in 0..{ctx.searcher.ntotal - 1}")
        rows = directory.items(body.ids).to_pylist()
        return [{"id": i, "metadata": item_fields(request, row)} for i, row in zip(body.ids, rows)]

    return api
