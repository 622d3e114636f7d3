"""Micro-batching: concurrent queries over real HTTP share encoder calls and FAISS searches, and each
request still gets its own answer."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from pipeline.encode.encoder import ClipEncoder
from pipeline.search import Searcher

TEXTS = [f"a photo number {i} of something" for i in range(16)]


@pytest.fixture
def counted_encoder(monkeypatch):
    """Counts the real encoder's text and image calls (and their batch sizes), in any thread."""
    calls: dict[str, list[int]] = {"texts": [], "images": []}
    lock = threading.Lock()
    encode_texts, encode_images = ClipEncoder.encode_texts, ClipEncoder.encode_images

    def counting_texts(self, texts):
        with lock:
            calls["texts"].append(len(texts))
        return encode_texts(self, texts)

    def counting_images(self, images):
        with lock:
            calls["images"].append(len(images))
        return encode_images(self, images)

    monkeypatch.setattr(ClipEncoder, "encode_texts", counting_texts)
    monkeypatch.setattr(ClipEncoder, "encode_images", counting_images)
    return calls


@pytest.fixture(scope="module")
def batching_server(start_server, photo_index):
    # a 300 ms window: the 16 requests below reach the server within it even on a loaded machine
    return start_server(photo_index, "batch_wait_ms=300", "max_batch=64")


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/search", json=body) for body in bodies))


def test_concurrent_text_queries_share_encoder_calls(batching_server, counted_encoder, photo_index):
    ks = [1 + i % 6 for i in range(len(TEXTS))]  # different k per request: each gets its own length back
    before = httpx.get(f"{batching_server.url}/healthz").json()["batches"]["texts"]
    responses = asyncio.run(_post_all(batching_server.url, [{"text": t, "k": k} for t, k in zip(TEXTS, ks)]))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]

    calls = counted_encoder["texts"]
    assert sum(calls) == len(TEXTS)  # every text encoded exactly once
    assert len(calls) <= 4 and max(calls) >= 4, calls  # 16 requests, a handful of encoder calls
    batches = httpx.get(f"{batching_server.url}/healthz").json()["batches"]["texts"] - before
    assert batches == len(calls)

    reference = Searcher.open(photo_index)  # each request got the answer of its own query
    for text, k, response in zip(TEXTS, ks, responses):
        expected = reference.search(texts=[text], k=k)
        hits = response.json()["hits"]
        assert [h["id"] for h in hits] == list(expected.ids[0])
        np.testing.assert_allclose([h["score"] for h in hits], expected.scores[0], rtol=1e-5, atol=1e-6)


def test_a_bad_query_in_a_batch_fails_alone(batching_server, counted_encoder, photos):
    import base64

    good = base64.b64encode((photos / "sub/chelsea.jpg").read_bytes()).decode()
    ids = [{"id": "coffee.jpg", "k": 1}, {"id": "missing.jpg"}, {"id": "camera.jpg", "k": 1}]
    bodies = [{"image": good, "k": 1}] * 3 + [{"vector": [0.5] * 32, "k": 1}, *ids]
    responses = asyncio.run(_post_all(batching_server.url, bodies))
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 404, 200]
    assert all(r.json()["hits"][0]["id"] == "sub/chelsea.jpg" for r in responses[:3])
    assert [responses[i].json()["hits"][0]["id"] for i in (4, 6)] == ["coffee.jpg", "camera.jpg"]
    assert counted_encoder["images"] and sum(counted_encoder["images"]) == 3
    assert len(counted_encoder["images"]) < 3
