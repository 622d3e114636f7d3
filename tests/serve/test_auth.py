"""The bearer token and the CORS allow-list, over real HTTP on a live server (the page: test_page.py)."""

from __future__ import annotations

import pytest

from pipeline.cli import main

from .conftest import ALLOWED_ORIGIN, TOKEN

PROTECTED = [
    ("POST", "/search", {"text": "a cat", "k": 2}),
    ("GET", "/items/coffee.jpg", None),
    ("GET", "/items?id=coffee.jpg", None),
    ("GET", "/thumbnails/coffee.jpg", None),
    ("GET", "/thumbnails?id=sub/chelsea.jpg", None),
    ("GET", "/openapi.json", None),
]


@pytest.fixture(scope="module")
def client(token_server):
    with token_server.client() as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED, ids=[f"{m} {p}" for m, p, _ in PROTECTED])
def test_every_route_but_healthz_and_the_page_needs_the_token(client, method, path, body):
    missing = client.request(method, path, json=body)
    assert missing.status_code == 401, missing.text
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="latent"'
    assert "Authorization: Bearer" in missing.json()["detail"]
    for wrong in (
        bearer(TOKEN[:-1] + "x"),
        bearer(TOKEN + "x"),
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {TOKEN}"},
    ):
        refused = client.request(method, path, json=body, headers=wrong)
        assert refused.status_code == 401, (wrong, refused.text)
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]
    answered = client.request(method, path, json=body, headers=bearer(TOKEN))
    assert answered.status_code == 200, answered.text
    if path.startswith("/thumbnails"):  # an authorized answer is not for shared caches
        assert answered.headers["Cache-Control"] == "private, max-age=3600"
    lower = client.request(method, path, json=body, headers={"authorization": f"bearer {TOKEN}"})
    assert lower.status_code == 200  # the scheme is case-insensitive (RFC 7235)


def test_healthz_and_the_page_are_public(client):
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["auth_required"] is True
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert client.get(path).status_code == 200, path
    assert client.post("/healthz").status_code == 401  # public means GET only


def test_cors_preflight_and_answers_for_an_allowed_origin_only(client):
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    allowed = client.options("/search", headers={"Origin": ALLOWED_ORIGIN, **preflight})
    assert allowed.status_code == 200, allowed.text  # answered without the token: browsers send none here
    assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    assert "authorization" in allowed.headers["Access-Control-Allow-Headers"].lower()
    assert "POST" in allowed.headers["Access-Control-Allow-Methods"]
    other = client.options("/search", headers={"Origin": "http://evil.example", **preflight})
    assert other.status_code == 400 and "Access-Control-Allow-Origin" not in other.headers
    answer = client.post("/search", json={"text": "cat"}, headers={"Origin": ALLOWED_ORIGIN, **bearer(TOKEN)})
    assert answer.status_code == 200 and answer.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    refused = client.post("/search", json={"text": "cat"}, headers={"Origin": ALLOWED_ORIGIN})
    assert refused.status_code == 401  # the page on that origin can read why
    assert refused.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
    elsewhere = client.post("/search", json={"text": "cat"}, headers={"Origin": "http://evil.example", **bearer(TOKEN)})
    assert "Access-Control-Allow-Origin" not in elsewhere.headers


def test_no_token_no_cors_by_default(server):
    with server.client() as client:
        assert client.get("/healthz").json()["auth_required"] is False
        assert client.get("/items/coffee.jpg").status_code == 200
        answer = client.get("/items/coffee.jpg", headers={"Origin": ALLOWED_ORIGIN})
        assert "Access-Control-Allow-Origin" not in answer.headers


def test_the_token_from_a_file(start_server, photo_index, tmp_path):
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    with start_server(photo_index, f"auth.token_file={path}").client() as client:
        assert client.get("/items/coffee.jpg").status_code == 401
        assert client.get("/items/coffee.jpg", headers=bearer(TOKEN)).status_code == 200


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([f"auth.token={TOKEN}", "auth.token_file=/etc/hostname"], "both set"),
        (["auth.token=short"], "16+ characters"),
        (["auth.token_file=/nonexistent/token"], "auth.token_file=/nonexistent/token: cannot read it"),
        (["cors.origins=[app.example.com]"], "cors.origins: 'app.example.com' is not an origin"),
        (["cors.origins=[http://app.example.com/path]"], "is not an origin"),
    ],
)
def test_bad_auth_and_cors_settings_exit_2_before_opening_the_index(capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        main(["serve", "index.path=/nonexistent/index", *args])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err, err
