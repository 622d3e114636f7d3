"""Seeded synthetic CLIP-like vectors for the index tests and benchmarks.

Unit vectors in ``clusters`` clusters whose centres are themselves grouped (``groups`` groups), with a
low-rank within-cluster variation (rank ``rank``, decaying spectrum) plus isotropic noise: neighbours
are close (cosine ~0.75 at the defaults), random pairs near-orthogonal, and neighbouring clusters
overlap, so IVF needs several probes to reach high recall (unlike well-separated blobs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.io.shards import EmbeddingInfo, commit_table, vectors_to_arrow


@dataclass(frozen=True)
class ClusteredSpec:
    dim: int = 512
    clusters: int = 1000
    groups: int = 20
    group_spread: float = 0.5  # distance of a cluster centre from its group's centre
    spread: float = 1.0  # within-cluster low-rank variation
    rank: int = 64
    noise: float = 0.2  # isotropic noise
    seed: int = 0


CHUNK_ROWS = 65536  # generation unit: chunk i is the same whatever the caller's batch size


def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def iter_clustered(n: int, spec: ClusteredSpec = ClusteredSpec()) -> Iterator[np.ndarray]:
    """``n`` float32 unit vectors in chunks of at most CHUNK_ROWS rows (deterministic for a spec)."""
    for vectors, _ in iter_clustered_groups(n, spec):
        yield vectors


def iter_clustered_groups(n: int, spec: ClusteredSpec = ClusteredSpec()) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``iter_clustered``'s chunks with each row's known group (0..groups-1): the truth regions are judged by."""
    root = np.random.default_rng(spec.seed)
    groups = _unit(root.standard_normal((spec.groups, spec.dim)).astype(np.float32))
    jitter = _unit(root.standard_normal((spec.clusters, spec.dim)).astype(np.float32))
    group_of = root.integers(0, spec.groups, spec.clusters)
    centres = _unit(groups[group_of] + spec.group_spread * jitter)
    basis = root.standard_normal((spec.rank, spec.dim)).astype(np.float32)
    basis *= (1.0 / np.sqrt(np.arange(1, spec.rank + 1, dtype=np.float32)))[:, None]
    basis *= spec.spread / np.sqrt((basis**2).sum())
    for i, start in enumerate(range(0, n, CHUNK_ROWS)):
        rng = np.random.default_rng([spec.seed, i])
        m = min(CHUNK_ROWS, n - start)
        cluster = rng.integers(0, spec.clusters, m)
        x = centres[cluster]
        x = x + rng.standard_normal((m, spec.rank), dtype=np.float32) @ basis
        x = x + rng.standard_normal((m, spec.dim), dtype=np.float32) * np.float32(spec.noise / np.sqrt(spec.dim))
        yield _unit(x).astype(np.float32), group_of[cluster]


def clustered_unit_vectors(n: int, spec: ClusteredSpec = ClusteredSpec()) -> np.ndarray:
    return np.concatenate(list(iter_clustered(n, spec))) if n else np.zeros((0, spec.dim), np.float32)


def fake_model(dim: int, name: str = "synthetic") -> dict:
    """A model fingerprint shaped like pipeline.encode.model's, for datasets not made by a model."""
    return {"name": name, "pretrained": None, "checkpoint_sha256": None, "dim": dim, "preprocess": {}}


def write_embedding_dataset(
    path: str | os.PathLike,
    vectors: np.ndarray | Iterable[np.ndarray],
    *,
    dtype: str = "float16",
    model: dict | None = None,
    rows_per_shard: int = 8192,
    first_row: int = 0,
) -> int:
    """Write ``vectors`` (an array or chunks of one) as an embedding dataset (docs/embedding-dataset.md).

    Modality image; row ``r`` (counting from ``first_row``) gets id ``v<r>``, source ``synthetic/<r>``,
    text ``vector <r>`` and a metadata column ``group`` (``r % 7``). Returns the number of rows written.
    """
    chunks = [vectors] if isinstance(vectors, np.ndarray) else vectors
    schema = None
    row = first_row
    Path(path).mkdir(parents=True, exist_ok=True)
    for chunk in chunks:
        if schema is None:
            info = EmbeddingInfo.create(model or fake_model(chunk.shape[1]), dtype, "image")
            schema = info.shard_schema([pa.field("group", pa.int64())])
        for start in range(0, len(chunk), rows_per_shard):
            part = chunk[start : start + rows_per_shard]
            rows = np.arange(row, row + len(part))
            table = pa.table(
                {
                    "id": [f"v{r}" for r in rows],
                    "source": [f"synthetic/{r}" for r in rows],
                    "text": [f"vector {r}" for r in rows],
                    "group": rows % 7,
                    "image_embedding": vectors_to_arrow(part, dtype),
                }
            )
            commit_table(table.cast(schema), str(path))
            row += len(part)
    return row - first_row


def write_npy_folder(path: str | os.PathLike, vectors: np.ndarray | Iterable[np.ndarray], rows_per_file: int) -> int:
    """Write vectors as ``emb_<n>.npy`` files (float32), the plain layout autofaiss reads."""
    chunks = [vectors] if isinstance(vectors, np.ndarray) else vectors
    Path(path).mkdir(parents=True, exist_ok=True)
    n = rows = 0
    pending: list[np.ndarray] = []
    for chunk in chunks:
        pending.append(np.asarray(chunk, dtype=np.float32))
        while sum(len(p) for p in pending) >= rows_per_file:
            block = np.concatenate(pending)
            np.save(Path(path) / f"emb_{n:05d}.npy", block[:rows_per_file])
            pending, n, rows = [block[rows_per_file:]], n + 1, rows + rows_per_file
    rest = np.concatenate(pending) if pending else np.zeros((0, 0), np.float32)
    if len(rest):
        np.save(Path(path) / f"emb_{n:05d}.npy", rest)
        rows += len(rest)
    return rows
