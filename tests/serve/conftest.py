"""Serve fixtures: real indexes (real photos embedded by the tiny model) behind a real uvicorn on loopback."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import faiss
import httpx
import pyarrow as pa
import pytest
from conftest import embed_overrides
from index.helpers import build, dataset, vectors
from synthetic import fake_model

from pipeline.cli import compose
from pipeline.config import ServeConfig
from pipeline.embed import run_embed
from pipeline.io.shards import EmbeddingInfo, commit_table, vectors_to_arrow

# One OpenMP thread: the searches here are tiny, and spinning threads on a shared 2-core machine are slow.
faiss.omp_set_num_threads(1)

MAX_K = 50
MAX_BODY = 2 * 1024 * 1024


@pytest.fixture(scope="session")
def photo_embeddings_dataset(local_ray, tmp_path_factory, photos, tiny_model) -> Path:
    """The photos (with captions) embedded by `latent embed` (tiny model, seeded random weights)."""
    emb = tmp_path_factory.mktemp("serve-emb") / "emb"
    run_embed(compose("embed", embed_overrides(photos, emb, tiny_model, "output.dtype=float32")))
    return emb


@pytest.fixture(scope="session")
def photo_index(photo_embeddings_dataset, tmp_path_factory) -> Path:
    """The photos' image embeddings, Flat index."""
    path = tmp_path_factory.mktemp("serve-idx") / "idx"
    build(photo_embeddings_dataset, path, "input.column=image_embedding", "index.factory=Flat")
    return path


@pytest.fixture(scope="session")
def vector_index(tmp_path_factory) -> Path:
    """300 synthetic 32-d vectors from no open_clip model: an index that answers vector queries only."""
    emb = dataset(tmp_path_factory.mktemp("serve-vec") / "emb", vectors(300), dtype="float32")
    path = tmp_path_factory.mktemp("serve-vec-idx") / "idx"
    build(emb, path, "index.factory=Flat")
    return path


NASTY_IDS = (
    "line\nbreak.jpg",
    "trailing newline\n",
    "a/b/c.jpg",
    "/leading-slash.jpg",
    "what?.jpg",
    "#hash.jpg",
    "50% off.jpg",
    "%2F not a slash",
    "with space and+plus.jpg",
    "café ☕ 写真.jpg",
    "back\\slash",
    'tab\tand "quotes" <b>&amp;',
    ".",
    "..",
    "../../etc/passwd",
)


@pytest.fixture(scope="session")
def nasty_index(tmp_path_factory, photos) -> Path:
    """Real photos under ids with every character a URL treats specially; their vectors are random."""
    images = sorted(photos.rglob("*.jpg")) + sorted(photos.rglob("*.png"))
    n = len(NASTY_IDS)
    x = vectors(n)
    info = EmbeddingInfo.create(fake_model(x.shape[1]), "float32", "image")
    table = pa.table(
        {
            "id": list(NASTY_IDS),
            "source": [str(images[i % len(images)]) for i in range(n)],
            "text": [f"nasty {i}" for i in range(n)],
            "image_embedding": vectors_to_arrow(x, "float32"),
        }
    )
    emb = tmp_path_factory.mktemp("serve-nasty") / "emb"
    emb.mkdir()
    commit_table(table.cast(info.shard_schema([])), str(emb))
    path = tmp_path_factory.mktemp("serve-nasty-idx") / "idx"
    build(emb, path, "index.factory=Flat")
    return path


def serve_config(index: Path, *overrides: str) -> ServeConfig:
    return compose(
        "serve",
        [
            f"index.path={index}",
            "port=0",
            f"max_k={MAX_K}",
            f"max_body_bytes={MAX_BODY}",
            "log_level=warning",
            "max_image_pixels=1000000",
            "max_query_pixels=1000000",
            "model.device=cpu",
            *overrides,
        ],
    )


@dataclass
class LiveServer:
    url: str
    app: object
    searcher: object

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kw)


@pytest.fixture(scope="session")
def start_server() -> Iterator:
    """start(index, *overrides) -> LiveServer: uvicorn in a thread on a free loopback port; all stopped at the end."""
    import uvicorn

    from pipeline.search import Searcher
    from pipeline.serve.app import create_app
    from pipeline.serve.server import bind

    running: list[tuple[uvicorn.Server, threading.Thread]] = []

    def start(index: Path, *overrides: str) -> LiveServer:
        cfg = serve_config(index, *overrides)
        searcher = Searcher.open(cfg.index.path, cfg.model)
        app = create_app(searcher, cfg)
        sock = bind("127.0.0.1", 0)
        port = sock.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
        thread.start()
        running.append((server, thread))
        deadline = time.monotonic() + 60
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return LiveServer(f"http://127.0.0.1:{port}", app, searcher)

    yield start
    for server, _ in running:
        server.should_exit = True
    for _, thread in running:
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def server(start_server, photo_index) -> LiveServer:
    """The photo index served with the tiny model (text and image queries on)."""
    return start_server(photo_index)


@pytest.fixture(scope="session")
def vector_server(start_server, vector_index) -> LiveServer:
    return start_server(vector_index)


@pytest.fixture(scope="session")
def nasty_server(start_server, nasty_index) -> LiveServer:
    return start_server(nasty_index)


TOKEN = "s3cret-token-for-tests-0123456789"
ALLOWED_ORIGIN = "http://app.example:3000"


@pytest.fixture(scope="session")
def token_server(start_server, photo_index) -> LiveServer:
    """The photo index behind a bearer token, with one CORS origin allowed."""
    return start_server(photo_index, f"auth.token={TOKEN}", f"cors.origins=[{ALLOWED_ORIGIN}]")
