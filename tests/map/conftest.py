"""Map fixtures: a seeded clustered corpus with known groups, written as an embedding dataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from synthetic import ClusteredSpec, iter_clustered_groups, write_embedding_dataset

from pipeline.cli import compose

SPEC = ClusteredSpec(dim=32, clusters=60, groups=5, seed=7)
ROWS = 6000


def clustered(n: int = ROWS, spec: ClusteredSpec = SPEC) -> tuple[np.ndarray, np.ndarray]:
    chunks = list(iter_clustered_groups(n, spec))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


@pytest.fixture(scope="session")
def grouped(tmp_path_factory) -> tuple[Path, np.ndarray]:
    """(dataset path, known group of each row): 6000 unit vectors in 5 groups, ids v0..v5999 in row order."""
    vectors, groups = clustered()
    path = tmp_path_factory.mktemp("map-emb") / "emb"
    write_embedding_dataset(path, vectors, dtype="float32", rows_per_shard=1500)
    return path, groups


def map_config(*overrides: str):
    return compose(
        "map",
        [
            "ray.num_cpus=2",
            "progress=false",
            "map.landmarks=1500",
            "quality.sample=1500",
            "quality.queries=500",
            *overrides,
        ],
    )
