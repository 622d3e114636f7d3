"""The map's cross-filter (API v1, additive): which points of the served map match a ``where`` predicate.

``POST /map/filter`` answers one bit per point (the map's order), so the map page dims the points outside
the filter; the page turns a map selection into a filter (``id IN (...)``) that the search page takes as
``?where=``. Kept apart from routes/map.py: the map's drawing and this filter change independently.
"""

# no `from __future__ import annotations`: FastAPI must see the request model's real type
import numpy as np
from fastapi import APIRouter, HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.serve.context import ServeContext
from pipeline.serve.models import ERRORS, ErrorBody
from pipeline.serve.routes.map import NO_MAP, MapState

FILTER_ANSWER = {
    200: {
        "content": {"application/octet-stream": {}},
        "description": "ceil(n / 8) bytes: bit i (little-endian within each byte) is set when point i matches; "
        "headers X-Points (n) and X-Matched (points that match)",
    },
    **ERRORS,
    404: {"model": ErrorBody, "description": "this index has no map"},
}


class MapFilter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    where: str = Field(max_length=1_000_000, description="a predicate over the items' metadata (docs/search.md)")


def point_mask(state: MapState, labels: np.ndarray, ctx: ServeContext, where: str) -> np.ndarray:
    """Which points match ``where`` (FilterError, a 400, for a bad predicate); ``labels``: the points' labels."""
    _, mask = ctx.searcher.columns.mask(where)  # the Searcher's cached mask: a search with it costs nothing more
    return np.where(labels >= 0, mask[np.maximum(labels, 0)], False)


def router(ctx: ServeContext) -> APIRouter:
    api = APIRouter()
    found: list[np.ndarray] = []  # each map point's label in the index (-1: not in it), looked up on first use

    def labels_of(state: MapState) -> np.ndarray:
        if not found:
            found.append(ctx.searcher.directory.labels_of(state.ids))
        return found[0]

    @api.post("/map/filter", response_class=Response, responses=FILTER_ANSWER, summary="Map points matching where=")
    async def map_filter(body: MapFilter) -> Response:
        state = ctx.map
        if state is None:
            raise HTTPException(404, ctx.map_missing or NO_MAP)
        mask = await run_in_threadpool(lambda: point_mask(state, labels_of(state), ctx, body.where))
        headers = {"X-Points": str(state.n), "X-Matched": str(int(mask.sum())), "Cache-Control": "no-cache"}
        bits = np.packbits(mask, bitorder="little").tobytes()
        return Response(bits, media_type="application/octet-stream", headers=headers)

    return api
