"""The map in `latent serve`: binary points, regions, items, neighbours, located queries, selections, routes."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pytest

from pipeline.cli import compose
from pipeline.map.build import run_map
from pipeline.map.store import MapDirectory, default_map_path


def map_overrides(*extra: str) -> list[str]:
    return ["ray.num_cpus=2", "progress=false", "quality.sample=6", "quality.queries=6", "image=false", *extra]


@pytest.fixture(scope="session")
def map_index(tmp_path_factory, photos, tiny_model):
    """The photos embedded by the tiny model in this process (ClipEncoder; no Ray to start on a busy machine),
    written as an embedding dataset with captions, indexed Flat."""
    from index.helpers import build
    from PIL import Image

    from pipeline.encode.encoder import ClipEncoder
    from pipeline.encode.model import describe_model, resolve_model
    from pipeline.io.shards import EmbeddingInfo, commit_table, vectors_to_arrow

    spec = resolve_model(tiny_model, None, "cpu", "fp32")
    files = sorted(p for p in photos.rglob("*") if p.suffix in (".jpg", ".png"))
    vectors = ClipEncoder(spec).encode_images([Image.open(f).convert("RGB") for f in files])
    info = EmbeddingInfo.create(describe_model(spec).fingerprint, "float32", "image")
    table = pa.table(
        {
            "id": [str(f.relative_to(photos)) for f in files],
            "source": [str(f) for f in files],
            "text": [f.with_suffix(".txt").read_text() for f in files],
            "image_embedding": vectors_to_arrow(vectors, "float32"),
        }
    )
    emb = tmp_path_factory.mktemp("map-photos") / "emb"
    emb.mkdir()
    commit_table(table.cast(info.shard_schema()), str(emb))
    idx = emb.parent / "idx"
    build(emb, idx, "index.factory=Flat")
    return idx


@pytest.fixture(scope="session")
def photo_map(local_ray, map_index):
    """The photo index's map, beside it (where serve finds it): a runner job, on the session's Ray."""
    run_map(compose("map", map_overrides(f"index.path={map_index}")))
    return MapDirectory(default_map_path(map_index))


@pytest.fixture(scope="session")
def map_server(start_server, map_index, photo_map):
    return start_server(map_index)


def test_the_map_of_an_index_is_found_beside_it_and_labelled_from_captions(photo_map):
    assert photo_map.info.rows == 6 and photo_map.info.source["kind"] == "index"
    assert photo_map.info.labels == "text"
    labels = photo_map.clusters()["label"].to_pylist()
    assert any(name in " ".join(labels) for name in ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins"))


def test_zero_shot_labels_come_from_the_vocabulary_through_the_models_text_tower(local_ray, map_index, tmp_path):
    vocabulary = tmp_path / "vocabulary.txt"
    vocabulary.write_text("cat\nrocket\ncoffee\ncoin\nastronaut\ncamera\ntree\nboat\n")
    out = tmp_path / "zs"
    run_map(
        compose(
            "map",
            map_overrides(
                f"index.path={map_index}",
                f"output.path={out}",
                "map.labels=zero_shot",
                f"map.vocabulary={vocabulary}",
                "model.device=cpu",
            ),
        )
    )
    found = MapDirectory(out)
    assert found.info.labels == "zero_shot"
    words = set(vocabulary.read_text().split())
    labels = found.clusters()["label"].to_pylist()
    assert labels and set(labels) <= words


def test_points_travel_as_ten_bytes_per_point(map_server, photo_map):
    with map_server.client() as client:
        res = client.get("/map/points")
        info = client.get("/map/info").json()
    assert res.status_code == 200 and res.headers["content-type"] == "application/octet-stream"
    n = int(res.headers["x-points"])
    assert n == 6 == info["rows"] and len(res.content) == 10 * n and res.headers["x-cluster-type"] == "uint16"
    x = np.frombuffer(res.content, "<f4", n, 0)
    fine = np.frombuffer(res.content, "<u2", n, 8 * n)
    points = photo_map.points()
    np.testing.assert_array_equal(x, points.column("x").to_numpy())
    finest = f"cluster_{photo_map.info.levels - 1}"  # the number of levels follows the data (6 rows: few)
    np.testing.assert_array_equal(fine, points.column(finest).to_numpy())


def test_clusters_items_neighbours(map_server, photo_map):
    with map_server.client() as client:
        clusters = client.get("/map/clusters").json()
        levels = set(range(photo_map.info.levels))
        assert {c["level"] for c in clusters} == levels and sum(c["size"] for c in clusters if c["level"] == 0) == 6
        point = client.get("/map/points/2").json()
        assert point["id"] == photo_map.points().column("id")[2].as_py() and point["thumbnail"].endswith(point["id"])
        assert client.get("/map/points/6").status_code == 404
        near = client.get("/map/neighbors/2", params={"k": 3}).json()
        assert near["hits"][0]["id"] == point["id"] and near["hits"][0]["index"] == 2  # itself first
        assert all(h["x"] is not None for h in near["hits"])
        assert client.get("/map/neighbors/2", params={"k": 0}).status_code == 400


def test_a_query_lands_on_the_map_with_its_hits(map_server):
    with map_server.client() as client:
        got = client.post("/map/locate", json={"text": "a photo of coffee", "k": 3}).json()
        info = client.get("/map/info").json()
        x0, y0, x1, y1 = info["bounds"]
        assert x0 - 1 <= got["x"] <= x1 + 1 and y0 - 1 <= got["y"] <= y1 + 1
        assert len(got["hits"]) == 3 and all(h["index"] is not None for h in got["hits"])
        first = got["hits"][0]["id"]
        by_id = client.post("/map/locate", json={"id": first, "k": 1}).json()
        assert by_id["hits"][0]["id"] == first
        assert np.hypot(by_id["x"] - by_id["hits"][0]["x"], by_id["y"] - by_id["hits"][0]["y"]) < 0.5 * (x1 - x0)
        terms = client.post("/map/locate", json={"expression": f"id:{first} + 'a photo of a rocket'", "k": 2})
        assert terms.status_code == 200, terms.text
        bad = client.post("/map/locate", json={"expression": "id:x +", "k": 2})
        assert bad.status_code == 400 and "terms" in bad.json()["detail"]
        assert client.post("/map/locate", json={"text": "a", "id": first}).status_code == 400


def test_an_image_query_lands_where_its_photo_is(map_server, photo_map, photos):
    import base64

    photo = sorted(p for p in photos.rglob("*.jpg"))[0]
    image = base64.b64encode(photo.read_bytes()).decode()
    with map_server.client() as client:
        got = client.post("/map/locate", json={"image": image, "k": 1})
        assert got.status_code == 200, got.text
        assert got.json()["hits"][0]["id"] == str(photo.relative_to(photos))  # the photo itself, first
        mixed = client.post("/map/locate", json={"terms": [{"image": image}, {"text": "a rocket", "weight": 0.5}]})
        assert mixed.status_code == 200, mixed.text
        bad = client.post("/map/locate", json={"image": "bm90IGFuIGltYWdl"})  # base64 of "not an image"
        assert bad.status_code == 400 and "not a usable image" in bad.json()["detail"]


def test_selection_and_route(map_server, photo_map):
    ids = photo_map.points().column("id").to_pylist()
    with map_server.client() as client:
        sel = client.post("/map/selection", json={"indices": [0, 3, 5], "items": 2}).json()
        assert sel["count"] == 3 and sel["ids"] == [ids[0], ids[3], ids[5]] and len(sel["items"]) == 2
        assert client.post("/map/selection", json={"indices": [6]}).status_code == 400
        repeated = client.post("/map/selection", json={"indices": [3, 0, 3, 3, 0], "items": 5}).json()
        assert repeated["count"] == 2 and repeated["ids"] == [ids[0], ids[3]] and len(repeated["items"]) == 2
        itself = client.post("/map/path", json={"from": ids[2], "to": ids[2], "steps": 6}).json()["route"]
        assert [r["id"] for r in itself] == [ids[2]]
        route = client.post("/map/path", json={"from": ids[0], "to": ids[4], "steps": 4}).json()["route"]
        assert route[0]["id"] == ids[0] and route[-1]["id"] == ids[4] and len({r["id"] for r in route}) == len(route)
        unknown = client.post("/map/path", json={"from": "nope", "to": ids[4]})
        assert unknown.status_code == 400 and "nope" in unknown.json()["detail"]


def test_terms_search_without_the_map(vector_server):
    with vector_server.client() as client:
        first = client.post("/search", json={"vector": [1.0] + [0.0] * 31, "k": 1}).json()["hits"][0]["id"]
        got = client.post("/search/terms", json={"terms": [{"id": first, "weight": 1.0}], "k": 2}).json()
        assert got["hits"][0]["id"] == first
        big = 10**6  # the same fault, the same status on both routes
        for route, body in (("/search", {"vector": [1.0] + [0.0] * 31}), ("/search/terms", {"id": first})):
            answer = client.post(route, json={**body, "k": big})
            assert answer.status_code == 422 and answer.json()["detail"][0]["loc"][-1] == "k", (route, answer.text)
        assert client.get("/map/points").status_code == 404  # this index has no map: a clear 404
        page = client.get("/map")
        assert page.status_code == 404 and "latent map index.path=" in page.text


def test_serve_with_a_map_path_that_is_not_a_map_exits_2(map_index, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "serve", f"index.path={map_index}", f"map.path={tmp_path}", "port=0"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "not a map directory" in proc.stderr


MAP_OPERATIONS = [
    "GET /map/info",
    "GET /map/points",
    "GET /map/clusters",
    "GET /map/points/{index}",
    "GET /map/neighbors/{index}",
    "POST /map/locate",
    "POST /map/selection",
    "POST /map/path",
    "POST /search/terms",
]


@pytest.mark.slow
def test_no_generated_request_to_the_map_gets_a_5xx(map_server):
    """Schemathesis over the map's operations (as tests/serve/test_fuzz.py does for the others): requests
    that fit the schema get a documented status and body, and none that breaks it gets a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

    schema = schemathesis.openapi.from_url(f"{map_server.url}/openapi.json")
    found = {f"{op.method.upper()} {op.path}": op for op in (r.ok() for r in schema.get_all_operations())}
    assert set(MAP_OPERATIONS) <= set(found), sorted(found)
    seen: dict[str, list[int]] = {}

    def fuzz(name: str, mode: GenerationMode) -> None:
        checks = [not_a_server_error]
        if mode == GenerationMode.POSITIVE:
            checks += [status_code_conformance, response_schema_conformance]

        @given(case=found[name].as_strategy(generation_mode=mode))
        @settings(max_examples=15, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case):
            response = case.call(timeout=30)
            seen.setdefault(name, []).append(response.status_code)
            case.validate_response(response, checks=checks)

        run()

    for name in MAP_OPERATIONS:
        fuzz(name, GenerationMode.POSITIVE)
        if name.startswith("POST"):  # GETs take any string: nothing negative to generate
            fuzz(name, GenerationMode.NEGATIVE)
    assert set(seen) == set(MAP_OPERATIONS) and max(max(codes) for codes in seen.values()) < 500
