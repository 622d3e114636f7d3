"""Search fixtures: a real index of real photos embedded by the tiny model, and a synthetic vector index."""

from __future__ import annotations

from pathlib import Path

import faiss
import pytest
from conftest import embed_overrides
from index.helpers import build, dataset, vectors

from pipeline.cli import compose
from pipeline.embed import run_embed

# One OpenMP thread: the searches here are tiny, and spinning threads on a shared 2-core machine are slow.
faiss.omp_set_num_threads(1)


@pytest.fixture(scope="session")
def photo_embeddings(local_ray, tmp_path_factory, photos, tiny_model, tiny_checkpoint) -> Path:
    """The photos (with captions) embedded by `latent embed` with the tiny model's local checkpoint."""
    out = tmp_path_factory.mktemp("photo-emb") / "emb"
    overrides = embed_overrides(photos, out, tiny_model, f"model.pretrained={tiny_checkpoint}", "output.dtype=float32")
    run_embed(compose("embed", overrides))
    return out


@pytest.fixture(scope="session")
def photo_index(photo_embeddings, tmp_path_factory) -> Path:
    """A Flat index of the photos' image embeddings, with the tiny model's fingerprint."""
    path = tmp_path_factory.mktemp("photo-idx") / "idx"
    build(photo_embeddings, path, "input.column=image_embedding")
    return path


@pytest.fixture(scope="session")
def vector_corpus(tmp_path_factory):
    """2000 seeded clustered 32-d unit vectors (ids v0..v1999), as an embedding dataset and float32 array."""
    x = vectors(2000)
    path = dataset(tmp_path_factory.mktemp("vec") / "emb", x, rows_per_shard=500, dtype="float32")
    return path, x


@pytest.fixture(scope="session")
def flat_index(vector_corpus, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vec-idx") / "idx"
    build(vector_corpus[0], path, "index.factory=Flat")
    return path
