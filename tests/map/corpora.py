"""Seeded corpora of groups made of sub-groups (two generators of different shape), for the map's tests and
bench/bench_map.py: each row's group and sub-group are known."""

from __future__ import annotations

import numpy as np


def _unit(a: np.ndarray) -> np.ndarray:
    return (a / np.linalg.norm(a, axis=1, keepdims=True)).astype(np.float32)


def nested_gaussians(
    groups: int = 12,
    subgroups: int = 4,
    n: int = 30000,
    dim: int = 128,
    seed: int = 0,
    spread: float = 0.6,
    noise: float = 0.25,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors, group, sub-group) of ``n`` rows: isotropic groups (random unit centres), each made of
    ``subgroups`` sub-groups at ``spread`` around its centre, rows at ``noise`` around theirs, equal sizes."""
    return next(nested_gaussians_chunks(n, dim, groups, subgroups, seed, spread, noise, chunk=n))


def nested_gaussians_chunks(
    n: int,
    dim: int,
    groups: int = 12,
    subgroups: int = 4,
    seed: int = 0,
    spread: float = 0.6,
    noise: float = 0.25,
    chunk: int = 50_000,
):
    """``nested_gaussians``' shape at any size, ``chunk`` rows at a time (bench/bench_map.py --corpus nested,
    1M x 512 at once would take ~8 GB as float64): yields (unit vectors, group, sub-group)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((groups, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    subs = (centres[:, None, :] + spread * rng.standard_normal((groups, subgroups, dim)) / np.sqrt(dim)).reshape(
        -1, dim
    )
    for first in range(0, n, chunk):
        size = min(chunk, n - first)
        sub = rng.integers(0, groups * subgroups, size)
        rows = subs[sub] + noise * rng.standard_normal((size, dim)) / np.sqrt(dim)
        yield _unit(rows), sub // subgroups, sub


def subspace_groups(
    groups: int = 8,
    subgroups: int = 5,
    n: int = 20000,
    dim: int = 96,
    seed: int = 0,
    rank: int = 6,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit vectors, group, sub-group) of ``n`` rows: each group a random ``rank``-dimensional subspace around
    its own centre, its sub-groups elongated (anisotropic) blobs inside it, sizes Zipf-like (1/rank)."""
    rng = np.random.default_rng(seed)
    k = groups * subgroups
    sizes = 1.0 / np.arange(1, k + 1)
    sub = rng.choice(k, size=n, p=sizes[rng.permutation(k)] / sizes.sum())
    centres = rng.standard_normal((groups, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = np.linalg.qr(rng.standard_normal((groups, dim, rank)))[0]  # groups x dim x rank
    offsets = rng.standard_normal((groups, subgroups, rank)) * 0.35
    scales = rng.uniform(0.02, 0.09, (groups, subgroups, rank))  # each sub-group stretched differently
    g, s = sub // subgroups, sub % subgroups
    local = offsets[g, s] + scales[g, s] * rng.standard_normal((n, rank))
    rows = centres[g] + np.einsum("ndr,nr->nd", bases[g], local) + 0.02 * rng.standard_normal((n, dim))
    return _unit(rows), g, sub
