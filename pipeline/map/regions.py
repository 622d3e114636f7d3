"""Regions of the map at several levels, coarse to fine, found on the landmarks and spread to every row.

Level 0: HDBSCAN on the landmarks' 2-D layout (the islands a reader sees); landmarks it calls noise
join the region most of their latent-space neighbours are in. Level i+1: each region of level i split
by k-means in latent space into at most ``split`` parts, so levels nest (a fine region has one parent).
Every other row takes the finest region its nearest landmarks vote for (their membership weights), and
that region's ancestors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Regions:
    """Per level: each landmark's region, and each region's parent at the level above."""

    landmark_labels: list[np.ndarray]  # level -> (n_landmarks,) int32 region id
    parents: list[np.ndarray]  # level -> (regions at level,) int32 parent id at level-1 (level 0: -1)

    @property
    def levels(self) -> int:
        return len(self.landmark_labels)

    def counts(self) -> list[int]:
        return [len(p) for p in self.parents]

    def ancestors(self, fine: np.ndarray) -> list[np.ndarray]:
        """Region ids at every level for rows whose finest region is ``fine``."""
        out = [np.asarray(fine, dtype=np.int32)]
        for level in range(self.levels - 1, 0, -1):
            out.insert(0, self.parents[level][out[0]])
        return out


def _fill_noise(labels: np.ndarray, graph: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Give noise landmarks (-1) the region most of their latent neighbours hold; leftovers the nearest
    region centre on the layout."""
    labels = labels.copy()
    for _ in range(10):
        noise = np.flatnonzero(labels < 0)
        if not len(noise):
            return labels
        neighbours = labels[graph[noise, 1:]]
        changed = False
        for row, votes in zip(noise, neighbours):
            votes = votes[votes >= 0]
            if len(votes):
                labels[row] = np.bincount(votes).argmax()
                changed = True
        if not changed:
            break
    noise = labels < 0
    if noise.any():
        ids = np.unique(labels[~noise])
        centres = np.stack([xy[labels == i].mean(axis=0) for i in ids])
        d = ((xy[noise, None, :] - centres[None]) ** 2).sum(-1)
        labels[noise] = ids[d.argmin(axis=1)]
    return labels


def _renumber(labels: np.ndarray) -> np.ndarray:
    _, inverse = np.unique(labels, return_inverse=True)
    return inverse.astype(np.int32)


def coarse_regions(xy: np.ndarray, graph: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Level 0: HDBSCAN on the layout, noise filled from the latent kNN ``graph`` (row -> neighbours)."""
    from sklearn.cluster import HDBSCAN

    if len(xy) <= min_cluster_size:
        return np.zeros(len(xy), dtype=np.int32)
    labels = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min(10, min_cluster_size), copy=False).fit_predict(
        xy.astype(np.float64)  # a copy already
    )
    if (labels < 0).all():
        return np.zeros(len(xy), dtype=np.int32)
    return _renumber(_fill_noise(labels, graph, xy))


def kmeans_regions(vectors: np.ndarray, k: int, seed: int) -> np.ndarray:
    """k-means in latent space (the alternative coarse level, and the split of finer levels)."""
    from sklearn.cluster import KMeans

    k = max(1, min(k, len(vectors)))
    if k == 1:
        return np.zeros(len(vectors), dtype=np.int32)
    return KMeans(n_clusters=k, n_init=1, random_state=seed).fit_predict(vectors).astype(np.int32)


def find_regions(
    vectors: np.ndarray,
    xy: np.ndarray,
    graph: np.ndarray,
    *,
    levels: int = 2,
    split: int = 8,
    min_cluster_size: int | None = None,
    coarse: str = "hdbscan",
    coarse_k: int = 20,
    seed: int = 0,
) -> Regions:
    """Regions of the landmarks at ``levels`` levels (see the module's docstring)."""
    n = len(vectors)
    min_size = min_cluster_size or max(10, n // 200)
    if coarse == "hdbscan":
        top = coarse_regions(xy, graph, min_size)
    else:
        top = _renumber(kmeans_regions(vectors, coarse_k, seed))
    labels = [top]
    parents = [np.full(int(top.max()) + 1, -1, dtype=np.int32)]
    for level in range(1, levels):
        above = labels[-1]
        below = np.empty(n, dtype=np.int32)
        parent: list[int] = []
        for region in range(int(above.max()) + 1):
            members = np.flatnonzero(above == region)
            k = min(split, max(1, len(members) // max(2, min_size // 4)))
            local = kmeans_regions(vectors[members], k, seed + level)
            local = _renumber(local)
            below[members] = local + len(parent)
            parent.extend([region] * (int(local.max()) + 1))
        labels.append(below)
        parents.append(np.asarray(parent, dtype=np.int32))
    return Regions(labels, parents)


def vote(landmark_labels: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, regions: int) -> np.ndarray:
    """Each row's region: the one its nearest landmarks (``neighbours``, ``weights``) weigh most for."""
    n, k = neighbours.shape
    scores = np.zeros((n, regions), dtype=np.float32)
    np.add.at(scores, (np.repeat(np.arange(n), k), landmark_labels[neighbours].reshape(-1)), weights.reshape(-1))
    return scores.argmax(axis=1).astype(np.int32)
