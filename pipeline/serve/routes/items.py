"""``GET /items/{id}`` (an item's metadata) and ``GET /thumbnails/{id}`` (its image, downscaled)."""

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import Response

from pipeline.serve.context import ID_CONVERTOR, ServeContext, metadata_of
from pipeline.serve.models import ErrorBody, Item
from pipeline.serve.thumbnails import NoThumbnail, make_thumbnail, read_source_image

THUMBNAIL_WAIT_S = 10.0  # a thumbnail request waits this long for a decode slot, then gets 503

ITEM_DOC = {
    "response_model": Item,
    "responses": {404: {"model": ErrorBody, "description": "the index holds no item with this id"}},
    "summary": "An indexed item's metadata, by id",
}
THUMBNAIL_DOC = {
    "response_class": Response,
    "responses": {
        200: {"content": {"image/jpeg": {}}, "description": "a JPEG, at most thumbnail_size on its long side"},
        404: {"model": ErrorBody, "description": "unknown id, or the item has no readable image"},
    },
    "summary": "A downscaled JPEG of an indexed item's image, by id",
}


def router(ctx: ServeContext) -> APIRouter:
    """Item and thumbnail routes; they run in Starlette's thread pool (IndexDirectory reads are thread-safe)."""
    api = APIRouter()

    def item(id: str, request: Request) -> Item:
        row = ctx.searcher.item(id)
        if row is None:
            raise HTTPException(404, f"no item with id {id!r} in the index")
        return Item(id=row["id"], metadata=metadata_of(row), thumbnail=ctx.thumbnail_url(request, row["id"]))

    def thumbnail(id: str) -> Response:
        data = ctx.thumbnails.get(id)
        if data is None:
            row = ctx.searcher.item(id)
            if row is None:
                raise HTTPException(404, f"no item with id {id!r} in the index")
            try:
                source = read_source_image(row.get("source"))
                with ctx.decodes.slot(wait_s=THUMBNAIL_WAIT_S):  # a page asks for many at once: they queue briefly
                    data = make_thumbnail(source, ctx.cfg.thumbnail_size, ctx.cfg.max_image_pixels)
            except NoThumbnail as err:
                raise HTTPException(404, f"no thumbnail for {id!r}: {err}") from err
            ctx.thumbnails.put(id, data)
        cache = "private, max-age=3600" if ctx.token else "public, max-age=3600"  # shared caches: no authorized answers
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": cache})

    # the id in the path, percent-encoded (any characters), or as ?id= (also ids a path cannot carry: "", ".", "..")
    api.get(f"/items/{{id:{ID_CONVERTOR}}}", **ITEM_DOC)(item)
    api.get("/items", **ITEM_DOC)(item)
    api.get(f"/thumbnails/{{id:{ID_CONVERTOR}}}", **THUMBNAIL_DOC)(thumbnail)
    api.get("/thumbnails", **THUMBNAIL_DOC)(thumbnail)
    return api
