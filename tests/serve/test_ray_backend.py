"""`latent serve backend=ray`: the HTTP API tests of test_api.py, unchanged, against the Ray Serve application
over a 2-shard index of the same photos; and a shard replica killed under load: only right answers or 503s,
then full service again once Ray Serve has restarted it."""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from index.helpers import build

from pipeline.search import Searcher

from .conftest import serve_config
from .rayserve import deploy, free_port
from .test_api import (  # noqa: F401  (collected here again, against the Ray Serve app)
    test_a_body_over_the_limit_gets_413_by_length_or_while_streaming,
    test_bad_searches_get_a_4xx_with_a_message,
    test_default_k_and_k_above_the_index_size,
    test_healthz_reports_the_api_version_and_the_index,
    test_image_search_finds_the_same_photo_first,
    test_items_by_id_with_slashes_plain_or_encoded,
    test_malformed_bodies_and_non_finite_vectors_get_422,
    test_page_and_static_files,
    test_png_query_image_too,
    test_text_search_answers_what_the_searcher_answers,
    test_thumbnails_are_downscaled_jpegs_of_the_indexed_image,
    test_unknown_ids_get_404,
    test_vector_and_id_search,
)

APP = "rayserve"


@dataclass
class RayServer:
    url: str

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


@pytest.fixture(scope="module")
def sharded_photo_index(photo_embeddings_dataset, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve-shards") / "idx"
    build(photo_embeddings_dataset, path, "input.column=image_embedding", "index.factory=Flat", "index.shards=2")
    return path


@pytest.fixture(scope="module")
def server(local_ray, sharded_photo_index):
    from ray import serve

    cfg = serve_config(sharded_photo_index, "backend=ray", f"port={free_port()}", "replica_cpus=0.2",
                       "shard_timeout_s=5")  # fmt: skip
    yield RayServer(deploy(cfg, APP))
    serve.shutdown()


@pytest.fixture(scope="module")
def client(server):
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def reference(photo_index):
    """The unsharded index, in this process: the Ray Serve app must answer exactly as it does."""
    return Searcher.open(photo_index)


def test_a_killed_shard_replica_gives_503s_never_partial_answers_then_recovers(server, reference):
    from ray import serve

    queries = np.random.default_rng(0).standard_normal((8, reference.dim)).astype(np.float32)
    expected = [reference.search(vectors=q, k=6).ids[0].tolist() for q in queries]
    shard = serve.get_deployment_handle("shard-00000", app_name=APP)
    pid = shard.pid.remote().result(timeout_s=30)
    outcomes: list[tuple[float, int]] = []
    wrong: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            i = 0
            while not stop.is_set():
                q = i % len(queries)
                r = c.post("/search", json={"vector": queries[q].tolist(), "k": 6})
                outcomes.append((time.monotonic(), r.status_code))
                right = (r.status_code == 200 and [h["id"] for h in r.json()["hits"]] == expected[q]) or (
                    r.status_code == 503 and "shard-00000.faiss" in r.json()["detail"]  # names the missing shard
                )
                if not right:
                    wrong.append(f"{r.status_code} {r.text}")
                i += 1

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    time.sleep(1.0)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + 120
    while time.monotonic() < deadline:  # back to full service: 20 answers in a row after the kill
        after = [status for t, status in outcomes if t > killed]
        if len(after) >= 20 and all(s == 200 for s in after[-20:]):
            break
        time.sleep(0.2)
    stop.set()
    thread.join(timeout=60)
    assert not wrong, wrong[:3]
    after = [(t, s) for t, s in outcomes if t > killed]
    assert after and all(s == 200 for _, s in after[-20:]), "no full service within 120 s of the kill"
    failed = [t for t, s in after if s == 503]
    gap = (failed[-1] - killed) if failed else 0.0
    print(f"shard replica killed: {len(failed)} answers 503, service whole again {gap:.1f}s after the kill")
    assert shard.pid.remote().result(timeout_s=30) != pid  # a new replica process


@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_a_shard_replica_refuses_a_damaged_shard_file(tmp_path, damage):
    """A replica may map its shard on another node: it checks its own file there before answering."""
    import json

    from index.helpers import dataset, vectors

    from pipeline.index.store.format import INFO_FILE
    from pipeline.index.store.integrity import IndexCorrupted
    from pipeline.serve.ray_app import Shard, _info, shard_entries

    path = tmp_path / "idx"
    x = vectors(600, dim=16)
    no_ray = "parallel.min_vectors=null"  # the shard builds in this process
    build(dataset(tmp_path / "ds", x, dtype="float32"), path, "index.factory=Flat", "index.shards=2", no_ray)
    info = _info(str(path))
    first, second = shard_entries(info, str(path))
    replica = Shard.func_or_class(str(path), first, info, 1)  # a sound shard answers
    _, labels = replica.search(x[:1], 3)
    assert labels[0][0] == 0
    target = path / second.file
    data = bytearray(target.read_bytes())
    if damage == "flipped byte":
        data[len(data) // 2] ^= 0xFF
        match = "sha256 differs"
    else:
        del data[-64:]
        match = "truncated or replaced"
    target.write_bytes(bytes(data))
    assert second.file in json.loads((path / INFO_FILE).read_text())["files"]
    with pytest.raises(IndexCorrupted, match=f"{second.file}: .*{match}"):
        Shard.func_or_class(str(path), second, info, 1)


def test_filtered_search_over_remote_shards_equals_the_one_process_answer(client, reference):
    """where= on the Ray Serve backend: each shard deployment plans its slice of the mask, the merge is exact."""
    queries = np.random.default_rng(3).standard_normal((3, reference.dim)).astype(np.float32)
    for where in ("text LIKE 'a photo of c%'", "text = 'a photo of rocket'", "text = 'nothing'"):
        for q in queries:
            got = client.post("/search", json={"vector": q.tolist(), "k": 6, "where": where})
            assert got.status_code == 200, got.text
            expected = [i for i in reference.search(vectors=q, k=6, where=where).ids[0].tolist() if i is not None]
            assert [h["id"] for h in got.json()["hits"]] == expected, where
        plan = got.json()["plan"]
        assert plan["where"] == where and plan["rows"] == 6
        assert [s["file"] for s in plan["params"]["shards"]] == ["shard-00000.faiss", "shard-00001.faiss"]
    assert plan["kind"] == "none" and plan["matched"] == 0
    bad = client.post("/search", json={"vector": queries[0].tolist(), "k": 6, "where": "nope = 1"})
    assert bad.status_code == 400 and "unknown column 'nope'" in bad.json()["detail"]
