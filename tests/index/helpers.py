"""Index test helpers: seeded clustered unit vectors written as real inputs, configs, exact search."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np

from pipeline.cli import compose
from pipeline.config import IndexCommandConfig
from pipeline.index.build import IndexSummary, run_index
from pipeline.index.synthetic import ClusteredSpec, clustered_unit_vectors, write_embedding_dataset

REPO = Path(__file__).resolve().parents[2]


def vectors(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    return clustered_unit_vectors(n, ClusteredSpec(dim=dim, clusters=max(4, n // 50), groups=4, seed=seed))


def dataset(path: Path, x: np.ndarray, rows_per_shard: int = 1000, first_row: int = 0, **kw) -> Path:
    write_embedding_dataset(path, x, rows_per_shard=rows_per_shard, first_row=first_row, **kw)
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
