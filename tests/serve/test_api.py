"""The HTTP API over real HTTP on a live uvicorn: answers, items, thumbnails and every bad request."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.search import Searcher

from .conftest import MAX_BODY, MAX_K

CHELSEA = "sub/chelsea.jpg"  # tests/conftest.py `photos`: odd samples live in sub/
PHOTO_IDS = {"astronaut.jpg", "sub/chelsea.jpg", "coffee.jpg", "sub/rocket.png", "camera.jpg", "sub/coins.jpg"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def reference(photo_index):
    """A Searcher of its own, to compare the server's answers with."""
    return Searcher.open(photo_index)


def test_healthz_reports_the_api_version_and_the_index(client):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["api_version"] == "1"
    assert (health["ntotal"], health["dim"], health["metric"]) == (6, 32, "ip")
    assert health["model"] == "latent-tiny-vit"
    assert set(health["queries"]) == {"text", "image", "vector", "id"}
    assert health["text_queries_unavailable"] is None and health["max_k"] == MAX_K


def test_text_search_answers_what_the_searcher_answers(client, reference):
    response = client.post("/search", json={"text": "a photo of a cat", "k": 4})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["query"] == "text" and body["k"] == 4 and body["took_ms"] > 0
    expected = reference.search(texts=["a photo of a cat"], k=4)
    assert [h["id"] for h in body["hits"]] == list(expected.ids[0])
    np.testing.assert_allclose([h["score"] for h in body["hits"]], expected.scores[0], rtol=1e-5, atol=1e-6)
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4]
    hit = body["hits"][0]
    assert hit["metadata"]["text"] == f"a photo of {hit['id'].split('/')[-1].split('.')[0]}"
    assert hit["metadata"]["source"].endswith(hit["id"])
    assert "id" not in hit["metadata"] and "score" not in hit["metadata"]
    assert hit["thumbnail"] == "/thumbnails/" + hit["id"].replace("/", "%2F")


def test_default_k_and_k_above_the_index_size(client):
    assert len(client.post("/search", json={"text": "rocket"}).json()["hits"]) == 6  # default_k=10 > 6 items
    assert len(client.post("/search", json={"text": "rocket", "k": MAX_K}).json()["hits"]) == 6


def test_image_search_finds_the_same_photo_first(client, photos):
    data = (photos / CHELSEA).read_bytes()
    for image in (b64(data), "data:image/jpeg;base64," + b64(data)):
        hits = client.post("/search", json={"image": image, "k": 3}).json()["hits"]
        assert hits[0]["id"] == CHELSEA and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
        assert hits[1]["score"] < 0.9999


def test_png_query_image_too(client, photos):
    buf = io.BytesIO()
    Image.open(photos / "sub/rocket.png").save(buf, format="PNG")
    hits = client.post("/search", json={"image": b64(buf.getvalue()), "k": 1}).json()["hits"]
    assert hits[0]["id"] == "sub/rocket.png"


def test_vector_and_id_search(client, reference):
    vector = reference.vector("coffee.jpg")
    by_vector = client.post("/search", json={"vector": (vector * 3).tolist(), "k": 2}).json()  # not unit: normalised
    assert by_vector["hits"][0]["id"] == "coffee.jpg"
    assert by_vector["hits"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    by_id = client.post("/search", json={"id": "coffee.jpg", "k": 2}).json()
    assert [h["id"] for h in by_id["hits"]] == [h["id"] for h in by_vector["hits"]]


def test_items_by_id_with_slashes_plain_or_encoded(client):
    for path in (f"/items/{CHELSEA}", "/items/sub%2Fchelsea.jpg"):
        item = client.get(path).json()
        assert item["id"] == CHELSEA and item["metadata"]["text"] == "a photo of chelsea"
        assert json.loads(item["metadata"]["metadata"]) == {"sample": "chelsea", "index": 1}


def test_thumbnails_are_downscaled_jpegs_of_the_indexed_image(client, photos):
    for id in PHOTO_IDS:
        response = client.get(f"/thumbnails/{id}")
        assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(response.content))
        original = Image.open(photos / id)
        assert thumb.format == "JPEG" and max(thumb.size) == min(256, max(original.size))
        assert thumb.size[0] / thumb.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.02)
    again = client.get(f"/thumbnails/{CHELSEA}")  # from the cache: the same bytes
    assert again.content == client.get(f"/thumbnails/{CHELSEA}").content


def test_page_and_static_files(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="static/app.js"' in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for name in ("app.js", "style.css"):  # no CDN: nothing is fetched off-site
        assert "://" not in client.get(f"/static/{name}").text
    assert "://" not in page.text


# --- bad requests: 4xx with a message, never 5xx -----------------------------------------------

NOT_AN_IMAGE = b64(b"this is plain text, not an image at all")


def _truncated_jpeg(photos) -> str:
    return b64((photos / "astronaut.jpg").read_bytes()[:600])


def _large_png() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (1100, 1000)).save(buf, format="PNG")  # 1.1M pixels > max_image_pixels=1M (the test server's)
    return b64(buf.getvalue())


BAD_SEARCHES = [
    ({}, 400, "exactly one"),
    ({"k": 3}, 400, "exactly one"),
    ({"text": "", "k": 3}, 400, "empty"),
    ({"text": "   "}, 400, "empty"),
    ({"text": "cat", "vector": [0.1] * 32}, 400, "exactly one"),
    ({"text": "cat", "id": "coffee.jpg"}, 400, "exactly one"),
    ({"text": "cat", "k": 0}, 422, "greater than or equal to 1"),
    ({"text": "cat", "k": -5}, 422, "greater than or equal to 1"),
    ({"text": "cat", "k": MAX_K + 1}, 422, f"less than or equal to {MAX_K}"),
    ({"text": "cat", "k": 1_000_000_000}, 422, f"less than or equal to {MAX_K}"),  # issue 8: never allocated
    ({"text": "cat", "k": "ten"}, 422, "integer"),
    ({"text": 42}, 422, "string"),
    ({"txt": "cat"}, 422, "Extra inputs"),
    ({"image": "%%% not base64 %%%"}, 400, "base64"),
    ({"image": "abc"}, 400, "base64"),
    ({"image": "/etc/passwd"}, 400, "base64"),  # a path is never read
    ({"image": ""}, 400, "not a usable image"),
    ({"image": NOT_AN_IMAGE}, 400, "not a usable image"),
    ({"image": "TRUNCATED"}, 400, "image"),
    ({"image": "LARGE"}, 400, "too large"),
    ({"vector": [0.1] * 31}, 422, "at least 32"),
    ({"vector": [0.1] * 33}, 422, "at most 32"),
    ({"vector": [0.0] * 32}, 400, "zero"),
    ({"vector": [1e39] * 32}, 400, "float32"),
    ({"vector": ["x"] * 32}, 422, "number"),
    ({"id": "no/such/item.jpg"}, 404, "no item"),
    ({"id": ""}, 400, "empty"),
]


@pytest.mark.parametrize(("body", "status", "message"), BAD_SEARCHES, ids=[str(b)[:40] for b, _, _ in BAD_SEARCHES])
def test_bad_searches_get_a_4xx_with_a_message(client, photos, body, status, message):
    if body.get("image") == "TRUNCATED":
        body = {"image": _truncated_jpeg(photos)}
    elif body.get("image") == "LARGE":
        body = {"image": _large_png()}
    response = client.post("/search", json=body)
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])


@pytest.mark.parametrize(
    "raw",
    [
        '{"vector": [NaN' + ", 0.1" * 31 + "]}",
        '{"vector": [Infinity' + ", 0.1" * 31 + "]}",
        '{"text": "cat"',  # malformed JSON
        "",
        "[1, 2, 3]",
    ],
)
def test_malformed_bodies_and_non_finite_vectors_get_422(client, raw):
    response = client.post("/search", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"]


def test_a_body_over_the_limit_gets_413_by_length_or_while_streaming(client):
    body = json.dumps({"image": "A" * MAX_BODY}).encode()
    response = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]

    def chunks():  # no Content-Length: chunked transfer encoding, counted as it arrives
        for start in range(0, len(body), 65536):
            yield body[start : start + 65536]

    response = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and "max_body_bytes" in response.json()["detail"]
    assert client.post("/search", json={"text": "still fine", "k": 1}).status_code == 200


def test_unknown_ids_get_404(client):
    traversal = ("/thumbnails/..%2F..%2Fetc%2Fpasswd", "/items/%2Fetc%2Fpasswd", "/thumbnails/%2Fetc%2Fhostname")
    for path in ("/items/nope.jpg", "/thumbnails/nope.jpg", *traversal):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["detail"], path


def test_text_and_image_queries_on_an_index_without_a_model_get_400(vector_server, photos):
    with vector_server.client() as client:
        health = client.get("/healthz").json()
        assert health["queries"] == ["vector", "id"] and "synthetic" in health["text_queries_unavailable"]
        for body in ({"text": "a cat"}, {"image": b64((photos / CHELSEA).read_bytes())}):
            response = client.post("/search", json=body)
            assert response.status_code == 400 and "not available" in response.json()["detail"]
        assert client.post("/search", json={"id": "v7", "k": 1}).json()["hits"][0]["id"] == "v7"
        # items whose source is not a local image have no thumbnail
        assert client.get("/items/v7").status_code == 200
        assert client.get("/thumbnails/v7").status_code == 404
