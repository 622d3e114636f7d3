"""Micro-batching: concurrent queries over real HTTP share encoder calls and FAISS searches, and each
request still gets its own answer.

No timing: the worker thread is held inside a first batch until every other request has reached the
batcher, so what forms the next batch is decided by the batcher's rules alone (queued requests are
taken together, up to max_batch), not by how fast this machine is."""

from __future__ import annotations

import asyncio
import threading

import httpx
import numpy as np
import pytest

from pipeline.encode.encoder import ClipEncoder
from pipeline.search import Searcher
from pipeline.serve.batcher import MicroBatcher

TEXTS = [f"a photo number {i} of something" for i in range(15)]


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


class Gate:
    """Holds the batcher's worker inside its first batch until ``expected`` requests reached the batcher."""

    def __init__(self, monkeypatch) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.arrived = 0
        self.expected = 0
        self.batches: list[list[str]] = []
        run, search = MicroBatcher._run, MicroBatcher.search_planned  # every route's way in
        gate = self

        def held_run(batcher, batch):
            gate.batches.append([r.kind for r in batch])
            if len(gate.batches) == 1:
                gate.inside.set()
                assert gate.release.wait(120), "the other requests never reached the batcher"
            return run(batcher, batch)

        async def counted_search(batcher, kind, query, k, where=None):
            gate.arrived += 1  # on the event loop: the request is queued before the collector can run again
            if gate.expected and gate.arrived >= gate.expected:
                gate.release.set()
            return await search(batcher, kind, query, k, where)

        monkeypatch.setattr(MicroBatcher, "_run", held_run)
        monkeypatch.setattr(MicroBatcher, "search_planned", counted_search)

    def run(self, url: str, bodies: list[dict]) -> list[httpx.Response]:
        """POST a first (vector) query, then ``bodies`` concurrently once the worker holds the first."""
        self.expected = 1 + len(bodies)

        async def post_all() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=url, timeout=120) as client:
                first = asyncio.create_task(client.post("/search", json={"vector": [0.5] * 32, "k": 1}))
                assert await asyncio.to_thread(self.inside.wait, 120)
                rest = await asyncio.gather(*(client.post("/search", json=body) for body in bodies))
                assert (await first).status_code == 200
                return list(rest)

        return asyncio.run(post_all())


@pytest.fixture(scope="module")
def batching_server(start_server, photo_index):
    return start_server(photo_index, "batch_wait_ms=0", "max_batch=64")  # no waiting window at all


def test_queued_text_queries_share_one_encoder_call(batching_server, counted_encoder, photo_index, monkeypatch):
    gate = Gate(monkeypatch)
    ks = [1 + i % 6 for i in range(len(TEXTS))]  # different k per request: each gets its own length back
    before = httpx.get(f"{batching_server.url}/healthz").json()["batches"]["texts"]
    responses = gate.run(batching_server.url, [{"text": t, "k": k} for t, k in zip(TEXTS, ks)])
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]

    assert gate.batches == [["vectors"], ["texts"] * len(TEXTS)]  # everything queued became one batch
    assert counted_encoder["texts"] == [len(TEXTS)]  # one encoder call, every text encoded exactly once
    assert httpx.get(f"{batching_server.url}/healthz").json()["batches"]["texts"] - before == 1

    reference = Searcher.open(photo_index)  # each request got the answer of its own query
    for text, k, response in zip(TEXTS, ks, responses):
        expected = reference.search(texts=[text], k=k)
        hits = response.json()["hits"]
        assert [h["id"] for h in hits] == list(expected.ids[0])
        np.testing.assert_allclose([h["score"] for h in hits], expected.scores[0], rtol=1e-5, atol=1e-6)


def test_a_batch_holds_at_most_max_batch(start_server, photo_index, counted_encoder, monkeypatch):
    small = start_server(photo_index, "batch_wait_ms=0", "max_batch=4")
    gate = Gate(monkeypatch)
    responses = gate.run(small.url, [{"text": t, "k": 1} for t in TEXTS[:10]])
    assert all(r.status_code == 200 for r in responses)
    assert [len(b) for b in gate.batches] == [1, 4, 4, 2]
    assert counted_encoder["texts"] == [4, 4, 2]


def test_a_bad_query_in_a_batch_fails_alone(batching_server, counted_encoder, photos, monkeypatch):
    import base64

    gate = Gate(monkeypatch)
    good = base64.b64encode((photos / "sub/chelsea.jpg").read_bytes()).decode()
    ids = [{"id": "coffee.jpg", "k": 1}, {"id": "missing.jpg"}, {"id": "camera.jpg", "k": 1}]
    bodies = [{"image": good, "k": 1}] * 3 + [{"vector": [0.5] * 32, "k": 1}, *ids]
    responses = gate.run(batching_server.url, bodies)
    assert [r.status_code for r in responses] == [200, 200, 200, 200, 200, 404, 200]
    assert all(r.json()["hits"][0]["id"] == "sub/chelsea.jpg" for r in responses[:3])
    assert [responses[i].json()["hits"][0]["id"] for i in (4, 6)] == ["coffee.jpg", "camera.jpg"]
    assert len(gate.batches) == 2 and len(gate.batches[1]) == len(bodies)  # one batch, the bad query in it
    assert counted_encoder["images"] == [3]  # the three images encoded together
