"""Issue 18: serve hashes every index file in the background after it starts; /healthz shows the progress,
and once a file is found damaged every query gets 503 naming it (a large file: only sizes are checked at open)."""

from __future__ import annotations

import shutil
import time

import numpy as np

from pipeline.index.store import integrity
from pipeline.index.store.format import INDEX_FILE


def wait_for(client, state: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        files = client.get("/healthz").json()["files"]
        if files["state"] == state or time.monotonic() > deadline:
            return files
        time.sleep(0.05)


def test_a_damaged_large_file_found_after_start_turns_queries_into_503s(
    start_server, vector_index, tmp_path, monkeypatch
):
    monkeypatch.setattr(integrity, "SMALL_FILE_BYTES", 0)  # as for a big index: open checks sizes only
    path = shutil.copytree(vector_index, tmp_path / "idx")
    with open(path / INDEX_FILE, "r+b") as f:  # one stored vector zeroed: same size, another sha256
        f.seek(-7 * 32 * 4, 2)
        f.write(np.zeros(32, np.float32).tobytes())
    live = start_server(path)
    with live.client() as client:
        files = wait_for(client, "damaged")
        assert files["state"] == "damaged" and "index.faiss: sha256 differs" in files["error"]
        for answer in (
            client.post("/search", json={"vector": [1.0] + [0.0] * 31, "k": 3}),
            client.post("/search/terms", json={"terms": [{"kind": "vector", "value": [1.0] + [0.0] * 31}]}),
            client.get("/items", params={"id": "v1"}),
        ):
            assert answer.status_code == 503 and "index.faiss" in answer.json()["detail"], answer.text


def test_an_intact_index_is_reported_checked(vector_server):
    with vector_server.client() as client:
        files = wait_for(client, "ok")
        assert files["state"] == "ok" and files["checked"] == files["files"] >= 3
        assert client.post("/search", json={"vector": [1.0] + [0.0] * 31, "k": 3}).status_code == 200
