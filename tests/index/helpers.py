"""Index test helpers: seeded clustered unit vectors written as real inputs, configs, exact search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
from synthetic import ClusteredSpec, clustered_unit_vectors, fake_model, write_embedding_dataset

from pipeline.cli import compose
from pipeline.config import IndexCommandConfig
from pipeline.index.builder.build import run_index
from pipeline.index.builder.summary import IndexSummary
from pipeline.index.nodes import apply_search_params
from pipeline.index.store.directory import IndexDirectory
from pipeline.io.shards import EmbeddingInfo, commit_table, vectors_to_arrow

REPO = Path(__file__).resolve().parents[2]


def vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return clustered_unit_vectors(n, ClusteredSpec(dim=dim, clusters=max(4, n // 50), groups=4, seed=seed))


def dataset(path: Path, x: np.ndarray, rows_per_shard: int = 1000, first_row: int = 0, **kw) -> Path:
    write_embedding_dataset(path, x, rows_per_shard=rows_per_shard, first_row=first_row, **kw)
    return path


def captioned_dataset(
    path: Path, images: np.ndarray, texts: np.ndarray, captioned: np.ndarray, rows_per_shard: int, first_row: int = 0
) -> Path:
    """A dataset as `latent embed modality=auto` writes it when only some images have a caption (format 2,
    ``optional: ["text"]``): row ``r`` (from ``first_row``) is ``v<r>``; its text_embedding is null where
    ``captioned`` is False. Shards of ``rows_per_shard`` rows, float32."""
    info = EmbeddingInfo.create(fake_model(images.shape[1]), "float32", "both", optional=["text"])
    schema = info.shard_schema()
    for start in range(0, len(images), rows_per_shard):
        stop = min(start + rows_per_shard, len(images))
        rows = np.arange(first_row + start, first_row + stop)
        has = captioned[start:stop]
        table = pa.table(
            {
                "id": [f"v{r}" for r in rows],
                "source": [f"synthetic/{r}" for r in rows],
                "text": [f"caption {r}" if h else None for r, h in zip(rows, has)],
                "image_embedding": vectors_to_arrow(images[start:stop], "float32"),
                "text_embedding": vectors_to_arrow(texts[start:stop], "float32", valid=has),
            }
        )
        commit_table(table.cast(schema), str(path))
    return path


def config(input_path, index_path, *overrides: str) -> IndexCommandConfig:
    return compose(
        "index",
        [f"input.path={input_path}", f"index.path={index_path}", "progress=false", "index.max_memory=2G", *overrides],
    )


def build(input_path, index_path, *overrides: str) -> IndexSummary:
    return run_index(config(input_path, index_path, *overrides))


def exact_neighbours(x: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    _, labels = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
    return labels


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


def ids_of(directory: IndexDirectory, labels: np.ndarray) -> np.ndarray:
    """The item ids of ``labels`` (a one-file build adds its tune queries last, a sharded one in input order:
    the same row may have different labels, never a different id)."""
    return np.array(directory.items(labels.ravel()).column("id").to_pylist()).reshape(labels.shape)


def same_answers(a: IndexDirectory, b: IndexDirectory, queries: np.ndarray, k: int = 10) -> None:
    """Scores identical; the same ids with each score, except in a group of hits tying exactly on the k-th
    score, whose ids must be ones the reference ranks with that score (FAISS breaks ties by scan position,
    and the two directories may label the same rows differently)."""
    apply_search_params(b.index, a.info.search_params)
    da, ia = a.index.search(queries, k)
    db, ib = b.index.search(queries, k)
    np.testing.assert_array_equal(da, db)
    ia, ib = ids_of(a, ia), ids_of(b, ib)
    wide_d, wide_i = a.index.search(queries, 4 * k)
    wide_i = ids_of(a, wide_i)
    for q in range(len(queries)):
        last = da[q, -1]
        settled = da[q] != last
        for score in np.unique(da[q, settled]):  # within a tie, in any order
            assert set(ia[q, da[q] == score].tolist()) == set(ib[q, db[q] == score].tolist())
        tied = set(wide_i[q, wide_d[q] == last].tolist())
        assert set(ib[q, ~settled].tolist()) <= tied
