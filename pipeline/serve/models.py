"""The HTTP API's request and response bodies (docs/http-api.md); FastAPI derives /openapi.json from them."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from pipeline.search.limits import MAX_K

API_VERSION = "1"


class SearchQuery(BaseModel):
    """Exactly one of ``text``, ``image``, ``vector`` or ``id``; ``k`` hits at most."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    text: str | None = Field(None, description="search by a text (needs an index built by `latent embed`)")
    image: str | None = Field(
        None, description="search by an image: its encoded bytes (JPEG, PNG, …) in base64, or a data: URL"
    )
    vector: list[float] | None = Field(None, description="search by a vector of the index's dimension")
    id: str | None = Field(None, description="search by the stored vector of an indexed item")
    k: int = Field(10, ge=1, le=MAX_K, description="number of hits, at most the server's max_k")
    where: str | None = Field(
        None,
        max_length=1_000_000,
        description="only items whose metadata match this predicate, e.g. \"license = 'cc-by' AND year >= 2024\" "
        "(docs/search.md#filters); malformed or not fitting the index's columns: 400",
    )


def search_query_model(max_k: int, default_k: int, dim: int) -> type[SearchQuery]:
    """SearchQuery with this server's bounds, so that /openapi.json states them."""
    return create_model(
        "SearchRequest",
        __base__=SearchQuery,
        __doc__=SearchQuery.__doc__,
        vector=(
            list[float] | None,
            Field(None, min_length=dim, max_length=dim, description=f"search by a {dim}-d vector"),
        ),
        k=(int, Field(default_k, ge=1, le=max_k, description=f"number of hits, 1..{max_k}")),
    )


class Hit(BaseModel):
    id: str
    score: float = Field(description="cosine similarity (metric ip on unit vectors) or squared L2 distance")
    rank: int = Field(description="1 for the best hit")
    metadata: dict[str, Any] = Field(description="the item's row of items.arrow: source, text, passed-through columns")
    thumbnail: str = Field(description="URL of the item's thumbnail (404 when it has no readable image)")


class SearchPlan(BaseModel):
    """How a filtered search ran (docs/search.md#filters): the planner's choice and its estimates."""

    kind: str = Field(description="none (nothing matched), exact (brute force over the matches) or filtered")
    where: str = Field(description="the predicate as checked")
    matched: int = Field(description="items that match it")
    rows: int = Field(description="items in the index")
    selectivity: float = Field(description="matched / rows")
    params: dict[str, Any] = Field(description="the filtered plan's search parameters (nprobe, efSearch, …)")
    cost: dict[str, Any] = Field(
        description="the cost model's estimates of the exact and filtered plans, and their unit (null: unbounded)"
    )


class SearchResponse(BaseModel):
    query: str = Field(description="the kind of query: text, image, vector or id")
    k: int
    hits: list[Hit]
    took_ms: float = Field(description="server time for the request, in milliseconds")
    plan: SearchPlan | None = Field(
        None, description="with where: the plan the filtered search ran (added to version 1; null without where)"
    )


class Column(BaseModel):
    name: str = Field(description="as a where= predicate names it (metadata.<field> for a JSON sidecar's field)")
    kind: str = Field(description="number, string, bool, timestamp or other (other: only IS [NOT] NULL)")


class Columns(BaseModel):
    columns: list[Column] = Field(description="the index's filterable metadata columns, by name")


class Item(BaseModel):
    id: str
    metadata: dict[str, Any]
    thumbnail: str


class Health(BaseModel):
    status: str = Field(description='"ok"')
    api_version: str = Field(description="this API's version; it changes when a field changes meaning or disappears")
    latent_version: str
    ntotal: int = Field(description="items in the index")
    dim: int
    metric: str
    factory: str
    model: str | None = Field(description="the open_clip model of the index's vectors (null: vectors only)")
    queries: list[str] = Field(description="the query kinds this server answers")
    text_queries_unavailable: str | None = Field(
        None, description="why text and image queries are refused, when they are"
    )
    max_k: int
    default_k: int
    max_body_bytes: int
    auth_required: bool = Field(
        False, description="every route but /healthz and the page needs Authorization: Bearer TOKEN"
    )
    batches: dict[str, int] = Field(description="micro-batches run since start, per query kind")
    batched_queries: dict[str, int] = Field(description="queries answered since start, per query kind")
    files: dict[str, Any] | None = Field(
        None,
        description='the background sha256 check of every index file since start: state ("checking", "ok", '
        '"damaged", "no checksums"), checked, files, error (the damaged file; queries then get 503)',
    )


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong with the request")


# the error answers a query route can give, as documented in its OpenAPI entry
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "a bad query (the message says what to change)"},
    413: {"model": ErrorBody, "description": "the request body is over the server's max_body_bytes"},
    503: {"model": ErrorBody, "description": "max_decodes image decodes are running: retry after Retry-After seconds"},
}
