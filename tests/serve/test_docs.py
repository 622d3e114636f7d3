"""docs/http-api.md against the live server's /openapi.json: the contract documented is the one served."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pipeline.serve.models import API_VERSION

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
NOT_IN_SCHEMA = {("GET", "/"), ("GET", "/openapi.json")}  # the page and the schema itself


def documented_endpoints() -> set[tuple[str, str]]:
    return {(m, p) for m, p in re.findall(r"^\| `(GET|POST|PUT|DELETE) (/[^`]*)` \|", DOC.read_text(), re.M)}


@pytest.fixture(scope="module")
def openapi(server):
    with server.client() as client:
        return client.get("/openapi.json").json()


def test_every_documented_endpoint_is_served_and_every_served_one_documented(openapi):
    documented = documented_endpoints()
    assert len(documented) == 22  # search, columns, items, thumbnails, health, the map's (+ filter), clip-retrieval's
    served = {(method.upper(), path) for path, ops in openapi["paths"].items() for method in ops}
    assert documented - NOT_IN_SCHEMA == served


def test_documented_statuses_and_version(openapi):
    text = DOC.read_text()
    assert f"# The HTTP API (version {API_VERSION})" in text and openapi["info"]["version"] == API_VERSION
    search = openapi["paths"]["/search"]["post"]
    assert {"200", "400", "404", "413", "422"} <= set(search["responses"])
    request = openapi["components"]["schemas"]["SearchRequest"]["properties"]
    for field in ("text", "image", "vector", "id", "k"):
        assert field in request and f"| `{field}` |" in text
    hit = openapi["components"]["schemas"]["Hit"]["properties"]
    assert set(hit) == {"id", "score", "rank", "metadata", "thumbnail"}
    assert "404" in openapi["paths"]["/thumbnails/{id}"]["get"]["responses"]
    for image in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text):
        assert (DOC.parent / image).is_file(), image
