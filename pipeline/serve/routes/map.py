"""The map in `latent serve` (API v1, additive): the points as binary columns, the regions as JSON, a
point's item, its neighbours, where a query lands, the ids of a selection, a route; the map page.

The map is found at ``map.path`` or beside the index (``<index>.map``); an explicit map that is not a
map, or whose index changed since it was built, stops the server with a clear message (exit 2); a
stale map found by itself is left out with a warning, and /map says how to bring it up to date (append).
Without a map, /map says how to make one.
"""

# no `from __future__ import annotations`: FastAPI must see the request models' real types
import html
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import LatentError
from pipeline.map.place import Placer
from pipeline.map.store import MapDirectory, default_map_path, is_map_directory, level_column
from pipeline.serve.context import ServeContext, metadata_of
from pipeline.serve.models import ERRORS, ErrorBody

if TYPE_CHECKING:
    from pipeline.config import ServeConfig
    from pipeline.search import Searcher

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent.parent / "static"
MAX_SELECTION = 1_000_000
NO_MAP = "this index has no map: make one with `latent map index.path=INDEX` (or serve map.path=MAP)"
# documented answers besides 200 (OpenAPI), so clients and the fuzz tests know them
NOT_FOUND = {404: {"model": ErrorBody, "description": "this index has no map, or no such point"}}
NO_ITEM = {404: {"model": ErrorBody, "description": "an id the index does not hold"}}


class TermBody(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str | None = None
    image: str | None = Field(None, description="base64 or a data: URL")
    id: str | None = None
    vector: list[float] | None = None
    weight: float = 1.0


class LocateQuery(BaseModel):
    """Exactly one of text, image, id, vector, terms (a list of weighted terms) or expression (the CLI's form)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    text: str | None = None
    image: str | None = None
    id: str | None = None
    vector: list[float] | None = None
    terms: list[TermBody] | None = None
    expression: str | None = Field(None, description="\"id:ID + 'cyberpunk' - 0.5*'daylight'\"")
    k: int = Field(10, ge=1)


class Selection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    indices: list[int] = Field(description="point indices (positions in /map/points; a repeated one counts once)")
    items: int = Field(50, ge=0, le=500, description="how many of them to return with their metadata")


class RouteQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    steps: int = Field(8, ge=2, le=1000)


def find_map(searcher: "Searcher", cfg: "ServeConfig", why: list[str] | None = None) -> MapDirectory | None:
    """The map to serve with ``searcher``'s index (see the module's docstring); ``why`` gets the reason a map
    found beside the index was left out (stale: what to do about it)."""
    from pipeline.map.source import open_index

    explicit = getattr(getattr(cfg, "map", None), "path", None)
    path = Path(explicit) if explicit else default_map_path(searcher.directory.path)
    if not is_map_directory(path):
        if explicit:
            raise LatentError(f"map.path={explicit}: not a map directory (no map.json); make one with `latent map`")
        return None
    found = MapDirectory(path)
    try:
        if found.info.source.get("kind") == "index":
            found.check_fresh(open_index(str(searcher.directory.path)).fingerprint(), "the index")
        elif found.info.rows != searcher.ntotal:
            raise LatentError(
                f"the map at {path} holds {found.info.rows:,} points, the index {searcher.ntotal:,} items: "
                f"map the index (`latent map index.path=INDEX`) or its dataset again"
            )
    except LatentError as err:
        if explicit:
            raise
        log.warning("the map beside the index is left out: %s", err)
        if why is not None:
            why.append(str(err))
        return None
    return found


def load_map(searcher: "Searcher", cfg: "ServeConfig", why: list[str] | None = None) -> "MapState | None":
    """The map served with ``searcher``'s index, loaded in memory (None: there is none; ``why`` as find_map's)."""
    found = find_map(searcher, cfg, why)
    return MapState(found) if found is not None else None


class MapState:
    """The served map, in memory: positions, regions, ids (sorted, for id -> point), the landmark placer."""

    def __init__(self, found: MapDirectory) -> None:
        self.map = found
        info = found.info
        finest = level_column(info.levels - 1)
        table = found.points(["id", "x", "y", finest])
        self.n = table.num_rows
        self.ids = table.column("id").combine_chunks()
        self.x = table.column("x").to_numpy().astype("<f4")
        self.y = table.column("y").to_numpy().astype("<f4")
        fine = table.column(finest).to_numpy()
        self.cluster_type = "uint16" if info.clusters[-1] <= 65535 else "uint32"
        self.fine = fine.astype("<u2" if self.cluster_type == "uint16" else "<u4")
        order = pc.sort_indices(self.ids)
        self.sorted_ids = self.ids.take(order).to_numpy(zero_copy_only=False).astype(str)  # fixed-width: bisectable
        self.order = order.to_numpy()
        self.body = self.x.tobytes() + self.y.tobytes() + self.fine.tobytes()
        clusters = found.clusters()
        self.clusters = [
            {key: (None if isinstance(v, float) and not np.isfinite(v) else v) for key, v in row.items()}
            for row in clusters.to_pylist()
        ]
        landmarks = found.landmarks()
        k = int(info.params.get("place_k", 8))
        self.placer = Placer.from_landmarks(landmarks, info.metric, k, 0, keep=False, placement=info.placement)

    def index_of(self, ids: list[str]) -> list[int | None]:
        """Point indices of ``ids`` (None for ids not on the map)."""
        if not ids:
            return []
        at = np.searchsorted(self.sorted_ids, np.asarray(ids, dtype=str))
        out: list[int | None] = []
        for id, a in zip(ids, at):
            ok = a < self.n and self.sorted_ids[int(a)] == id
            out.append(int(self.order[a]) if ok else None)
        return out

    def locate(self, vector: np.ndarray) -> tuple[float, float]:
        xy, _ = self.placer.place(np.asarray(vector, np.float32).reshape(1, -1))
        return float(xy[0, 0]), float(xy[0, 1])


def router(ctx: ServeContext) -> APIRouter:
    """The map's routes; the map itself (``ctx.map``) is found and loaded by ``load_map``."""
    api = APIRouter()
    searcher, cfg, batcher = ctx.searcher, ctx.cfg, ctx.batcher
    state = ctx.map
    missing = ctx.map_missing or NO_MAP  # a stale map: append to it (create would be refused), not "make one"
    thumbnail_url = ctx.thumbnail_url

    def need() -> MapState:
        if state is None:
            raise HTTPException(404, missing)
        return state

    def hit_rows(request: Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        s = need()
        rows = [r for r in rows if r.get("id") is not None]
        where = s.index_of([r["id"] for r in rows])
        out = []
        for r, i in zip(rows, where):
            out.append(
                {
                    "id": r["id"],
                    "index": i,
                    "score": r.get("score"),
                    "x": float(s.x[i]) if i is not None else None,
                    "y": float(s.y[i]) if i is not None else None,
                    "metadata": metadata_of(r),
                    "thumbnail": thumbnail_url(request, r["id"]),
                    **({"step": r["step"]} if "step" in r else {}),
                }
            )
        return out

    @api.get("/map", include_in_schema=False)
    def map_page() -> Response:
        if state is None:
            page = f"<!doctype html><title>latent map</title><p id='no-map'>{html.escape(missing)}</p>"
            return HTMLResponse(page, 404)
        return FileResponse(STATIC_DIR / "map.html")

    @api.get(
        "/map/info",
        responses=NOT_FOUND,
        summary="The served map: rows, levels, regions per level, bounds, quality, labels",
    )
    def map_info() -> dict[str, Any]:
        s = need()
        info = s.map.info
        return {
            "rows": s.n,
            "levels": info.levels,
            "clusters": info.clusters,
            "bounds": info.bounds,
            "method": info.method,
            "labels": info.labels,
            "quality": info.quality,
            "cluster_type": s.cluster_type,
            "points_format": "x float32[n], y float32[n], finest-level cluster cluster_type[n]; little-endian",
        }

    @api.get(
        "/map/points",
        response_class=Response,
        responses={200: {"content": {"application/octet-stream": {}}}, **NOT_FOUND},
        summary="Every point as binary columns: x float32[n], y float32[n], finest cluster uint16|uint32[n]",
    )
    def map_points() -> Response:
        s = need()
        headers = {"X-Points": str(s.n), "X-Cluster-Type": s.cluster_type, "Cache-Control": "no-cache"}
        return Response(s.body, media_type="application/octet-stream", headers=headers)

    @api.get(
        "/map/clusters",
        responses=NOT_FOUND,
        summary="Regions at every level: level, cluster, parent, label, size, x, y",
    )
    def map_clusters() -> list[dict[str, Any]]:
        return need().clusters

    @api.get(
        "/map/points/{index}", responses=NOT_FOUND, summary="The item at a point index, with its position and regions"
    )
    def map_point(index: int, request: Request) -> dict[str, Any]:
        s = need()
        if not 0 <= index < s.n:
            raise HTTPException(404, f"no point {index} (the map has {s.n} points)")
        id = s.ids[index].as_py()
        row = searcher.item(id) or {"id": id}
        return {**hit_rows(request, [row])[0], "cluster": int(s.fine[index])}

    @api.get(
        "/map/neighbors/{index}",
        responses={**ERRORS, **NOT_FOUND},
        summary="The k nearest items (in latent space) of the item at a point",
    )
    async def map_neighbors(index: int, request: Request, k: int = 10) -> dict[str, Any]:
        s = need()
        if not 0 <= index < s.n:
            raise HTTPException(404, f"no point {index} (the map has {s.n} points)")
        if not 1 <= k <= cfg.max_k:
            raise HTTPException(400, f"k={k}: must be in 1..{cfg.max_k}")
        rows = await batcher.search("ids", s.ids[index].as_py(), k + 1)
        return {"index": index, "hits": hit_rows(request, rows)[: k + 1]}

    async def query_vector(body: LocateQuery) -> np.ndarray:
        from pipeline.search.terms import Term, combine_terms, parse_terms

        given = [f for f in ("text", "image", "id", "vector", "terms", "expression") if getattr(body, f) is not None]
        if len(given) != 1:
            raise HTTPException(400, f"give exactly one of text, image, id, vector, terms, expression (got {given})")
        if body.k > cfg.max_k:  # 422 as /search answers it (there the bound is in the request model)
            from fastapi.exceptions import RequestValidationError

            message = f"Input should be less than or equal to {cfg.max_k}"
            raise RequestValidationError([{"type": "less_than_equal", "loc": ("body", "k"), "msg": message}])
        field = given[0]
        if field == "expression":
            terms = parse_terms(body.expression)
        elif field == "terms":
            terms = []
            for i, t in enumerate(body.terms):
                kinds = [f for f in ("text", "image", "id", "vector") if getattr(t, f) is not None]
                if len(kinds) != 1:
                    raise HTTPException(400, f"terms[{i}]: give exactly one of text, image, id, vector")
                terms.append(Term(kinds[0], getattr(t, kinds[0]), t.weight))
        else:
            terms = [Term(field, getattr(body, field))]
        for t in terms:
            if t.kind == "image":
                t.value = await ctx.decode_query_image(t.value)
        return await batcher.call(combine_terms, searcher, terms)

    @api.post(
        "/map/locate",
        responses={**ERRORS, **NOT_FOUND},
        summary="Where a query lands on the map, and its hits (text, image, id, vector, terms)",
    )
    async def map_locate(body: LocateQuery, request: Request) -> dict[str, Any]:
        s = need()
        vector = await query_vector(body)
        x, y = s.locate(vector)
        rows = await batcher.search("vectors", vector[0], body.k)
        return {"x": x, "y": y, "hits": hit_rows(request, rows)}

    @api.post(
        "/search/terms",
        responses={**ERRORS, **NO_ITEM},
        summary="The k nearest items to weighted terms (works without a map)",
    )
    async def search_terms(body: LocateQuery, request: Request) -> dict[str, Any]:
        vector = await query_vector(body)
        rows = await batcher.search("vectors", vector[0], body.k)
        hits = [
            {"id": r["id"], "score": r["score"], "rank": rank, "metadata": metadata_of(r)}
            for rank, r in enumerate((r for r in rows if r.get("id") is not None), start=1)
        ]
        return {"k": body.k, "hits": hits}

    @api.post(
        "/map/selection",
        responses={**ERRORS, **NOT_FOUND},
        summary="The ids of a set of points (a box selection), and the first items",
    )
    def map_selection(body: Selection, request: Request) -> dict[str, Any]:
        s = need()
        if len(body.indices) > MAX_SELECTION:
            raise HTTPException(400, f"at most {MAX_SELECTION} indices")
        if body.indices and not 0 <= min(body.indices) <= max(body.indices) < s.n:  # before any int64 cast
            raise HTTPException(400, f"indices must be in 0..{s.n - 1}")
        indices = np.unique(np.asarray(body.indices, dtype=np.int64))  # each point once, however often named
        ids = s.ids.take(indices).to_pylist() if len(indices) else []
        items = [searcher.item(id) or {"id": id} for id in ids[: body.items]]
        return {"count": len(ids), "ids": ids, "items": hit_rows(request, items)}

    @api.post(
        "/map/path",
        responses={**ERRORS, **NO_ITEM},
        summary="A route between two items: the items nearest the great circle between them",
    )
    async def map_path(body: RouteQuery, request: Request) -> dict[str, Any]:
        from pipeline.search.terms import find_path

        route = await batcher.call(find_path, searcher, body.start, body.end, body.steps)
        return {"from": body.start, "to": body.end, "steps": body.steps, "route": hit_rows(request, route)}

    return api
