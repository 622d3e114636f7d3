"""Every id round-trips through the URLs the server gives out: newlines, `/`, `?`, `#`, `%`, spaces, non-ASCII, dots."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from .conftest import NASTY_IDS


@pytest.fixture(scope="module")
def client(nasty_server):
    with nasty_server.client() as c:
        yield c


@pytest.mark.parametrize("id", NASTY_IDS, ids=[repr(i) for i in NASTY_IDS])
def test_item_and_thumbnail_urls_given_out_answer_for_every_id(client, id):
    hits = client.post("/search", json={"id": id, "k": 1}).json()["hits"]
    assert hits[0]["id"] == id  # its own vector is its nearest neighbour
    thumbnail = hits[0]["thumbnail"]
    assert "\n" not in thumbnail and "?" not in thumbnail.removeprefix("/thumbnails?id=")
    response = client.get(thumbnail)
    assert response.status_code == 200, (thumbnail, response.text)
    assert Image.open(io.BytesIO(response.content)).format == "JPEG"
    item_url = thumbnail.replace("/thumbnails", "/items", 1)
    item = client.get(item_url)
    assert item.status_code == 200, (item_url, item.text)
    assert item.json()["id"] == id and item.json()["thumbnail"] == thumbnail
    by_query = client.get("/items", params={"id": id})  # the query form answers every id too
    assert by_query.status_code == 200 and by_query.json()["id"] == id


def test_an_id_is_never_cut_at_a_newline(client):
    """Starlette's path converter stops at a newline: /items/a%0Ab matched nothing, and with a trailing
    newline the id lost it (``$`` matches before a final newline) and named another item."""
    assert client.get("/items/trailing%20newline").status_code == 404  # the id without its newline
    assert client.get("/items/trailing%20newline%0A").json()["id"] == "trailing newline\n"
    assert client.get("/thumbnails/line%0Abreak.jpg").status_code == 200
