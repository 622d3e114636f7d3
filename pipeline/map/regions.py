"""Regions of the map at several levels, built from the fine grain up, found on the landmarks and spread
to every row.

The finest level: density regions (HDBSCAN on the landmarks' 2-D layout: the islands a reader sees;
landmarks it calls noise join the region most of their latent-space neighbours are in), each split by
k-means in latent space into parts of about 1/128 of the landmarks (``split_regions``). Coarser levels
merge regions near in latent space (``merge_tree``): a density region's parts first (Ward's merging of their
centroids, weighted by their sizes), then regions touching in the kNN graph, the pair sharing the most edges
per pair of rows first (average linkage on the graph), then, between pieces of the graph, Ward again;
cut at the top level's size (``map.top_regions``; null: the clearest cut between 5 and 30 regions), at
the density regions, and wherever else the tree has a clear cut (``choose_levels``: the number of levels
follows the data, ``map.levels`` caps it). Cuts of one tree nest exactly: a region has one parent.
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


# The density regions' HDBSCAN: min_cluster_size landmarks / 200, at least MIN_REGION; min_samples up to
# MIN_SAMPLES. On digits (1,797 landmarks) 10 and 10 split 5 of the 10 classes into islands of 10-30 rows (20
# regions, ARI 0.86, below umap-learn + HDBSCAN at min_cluster_size 20: 0.89); 20 and 20 (HDBSCAN's own default
# min_samples = min_cluster_size): 14 regions, ARI 0.90 (docs/benchmarks.md). Above 4,000 landmarks only
# min_samples changes (10 -> 20).
MIN_REGION = 20
MIN_SAMPLES = 20


def coarse_regions(xy: np.ndarray, graph: np.ndarray, min_cluster_size: int) -> np.ndarray:
    """Level 0: HDBSCAN on the layout, noise filled from the latent kNN ``graph`` (row -> neighbours)."""
    from sklearn.cluster import HDBSCAN

    if len(xy) <= min_cluster_size:
        return np.zeros(len(xy), dtype=np.int32)
    found = HDBSCAN(min_cluster_size=min_cluster_size, min_samples=min(MIN_SAMPLES, min_cluster_size), copy=False)
    labels = found.fit_predict(xy.astype(np.float64))  # a copy already
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


FINE_REGIONS = 128  # the finest level aims at about this many regions (density regions split by k-means)
TOP_RANGE = (5, 30)  # the top level's size when map.top_regions is null: the clearest cut in this range
LEVEL_RATIO = 4  # a level between two others only where they differ at least this much in size ...
TIE = 0.9  # cuts whose clearness is within this share of the clearest count as tied
MIN_GAP = 1.3  # ... and the tree has a clear cut there (next merge's cost / last merge's cost)


def split_regions(vectors: np.ndarray, dense: np.ndarray, split: int, min_size: int, seed: int) -> np.ndarray:
    """The finest level: each density region split by k-means in latent space into parts of about
    ``len(vectors) / FINE_REGIONS`` rows (at most ``split`` parts, none under ``min_size / 4`` rows)."""
    part = max(1, len(vectors) // FINE_REGIONS)
    fine = np.empty(len(vectors), dtype=np.int32)
    count = 0
    for region in range(int(dense.max()) + 1):
        members = np.flatnonzero(dense == region)
        k = min(split, max(1, round(len(members) / part)), max(1, len(members) // max(2, min_size // 4)))
        local = _renumber(kmeans_regions(vectors[members], k, seed + region))
        fine[members] = local + count
        count += int(local.max()) + 1
    return fine


def merge_tree(
    centroids: np.ndarray, sizes: np.ndarray, edges: np.ndarray | None = None, within: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Agglomerative merging of regions: (merges: (m-1, 2) ids, new clusters numbered m, m+1, ... as scipy's
    linkage; costs: each merge's Ward cost, the rise of the within-region sum of squares of the latent
    centroids weighted by the regions' sizes, made non-decreasing). ``within``: each region's density region:
    parts of one density region merge back first (by Ward), so that the density regions are a cut of the
    tree. ``edges`` (m x m, symmetric): the kNN graph's edges between regions; while any two regions touch,
    the pair sharing the most edges per pair of their rows merges next (average linkage on the kNN graph: it
    follows the data's manifold, where centroids of curved or uneven classes mislead Ward, measured on
    digits and Flavia leaves, docs/benchmarks.md); then, between pieces the graph does not join, Ward."""
    m = len(centroids)
    c = np.zeros((2 * m - 1, centroids.shape[1]))
    c[:m] = centroids
    n = np.zeros(2 * m - 1)
    n[:m] = sizes
    alive = list(range(m))
    merges, costs = np.zeros((max(m - 1, 0), 2), dtype=np.int64), np.zeros(max(m - 1, 0))

    def cost(a: np.ndarray, b: int) -> np.ndarray:
        return n[a] * n[b] / (n[a] + n[b]) * ((c[a] - c[b]) ** 2).sum(-1)

    ids = np.asarray(alive)
    d = n[ids, None] * n[None, ids] / (n[ids, None] + n[None, ids]) * ((c[ids, None] - c[None, ids]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    shared = np.zeros_like(d) if edges is None else np.asarray(edges, dtype=np.float64).copy()
    np.fill_diagonal(shared, 0.0)
    group = np.arange(m) if within is None else np.asarray(within).copy()
    for t in range(m - 1):
        same = np.where(group[:, None] == group[None], d, np.inf)
        if np.isfinite(same).any():
            i, j = np.unravel_index(np.argmin(same), d.shape)
        elif shared.any():
            sz = n[np.asarray(alive)]
            i, j = np.unravel_index(np.argmax(shared / (sz[:, None] * sz[None])), d.shape)
        else:
            i, j = np.unravel_index(np.argmin(d), d.shape)
        a, b, new = alive[i], alive[j], m + t
        merges[t], costs[t] = (a, b), d[i, j]
        n[new] = n[a] + n[b]
        c[new] = (n[a] * c[a] + n[b] * c[b]) / n[new]
        keep = [x for x in range(len(alive)) if x not in (i, j)]
        alive = [alive[x] for x in keep] + [new]
        d = d[np.ix_(keep, keep)]
        row = cost(np.asarray(alive[:-1], dtype=np.int64), new)
        d = np.block([[d, row[:, None]], [row[None, :], np.full((1, 1), np.inf)]])
        group = np.append(group[keep], group[i] if group[i] == group[j] else -1 - t)
        joined = (shared[i] + shared[j])[keep]
        shared = np.block([[shared[np.ix_(keep, keep)], joined[:, None]], [joined[None, :], np.zeros((1, 1))]])
    return merges, np.maximum.accumulate(costs) if len(costs) else costs


def cut(merges: np.ndarray, m: int, clusters: int) -> np.ndarray:
    """Each of the ``m`` leaves' cluster when the tree is cut at ``clusters`` clusters."""
    root = np.arange(2 * m - 1)
    for t in range(m - clusters):
        root[merges[t]] = m + t
    for node in range(2 * m - 2, -1, -1):  # a merged node's root is its parent's root (parents numbered higher)
        root[node] = root[root[node]] if root[node] != node else node
    return _renumber(root[:m])


def choose_levels(costs: np.ndarray, m: int, top: int | None, cap: int, keep: int | None = None) -> list[int]:
    """Region counts per level, coarse -> fine, ending with ``m``: the top at ``top`` (null: the clearest cut
    in ``TOP_RANGE``), ``keep`` (the density regions' count) next, then levels between, or above a top of
    15 or more, where the tree has a clear cut, at most ``cap`` levels."""

    def gap(k: int) -> float:  # how clear a cut at k clusters is: the next merge's cost over the last one's
        return float(costs[m - k] / max(costs[m - k - 1], 1e-12)) if 1 <= k < m else 0.0

    if top is not None:
        first = max(1, min(top, m))
    else:
        lo, hi = TOP_RANGE
        choices = range(min(lo, m), min(hi, m - 1) + 1)
        clearest = max((gap(k) for k in choices), default=0.0)
        # near ties go to the coarser cut: the top level is the overview, finer cuts get levels of their own
        first = min((k for k in choices if gap(k) >= TIE * clearest), default=m)
        if m <= hi and gap(first) < MIN_GAP:
            first = m
    if top is None and keep is not None and keep >= TOP_RANGE[0] and max(first, keep) <= 1.5 * min(first, keep):
        first = keep  # a top about as fine as the density regions: they are the top
    counts = [first, m] if first < m else [m]
    if keep is not None and first < keep < m and cap >= 3:
        counts = [first, keep, m]
    while len(counts) < cap:
        best, at = 0.0, -1
        spans = [range(2 * a, b // 2 + 1) for a, b in zip(counts, counts[1:]) if b >= LEVEL_RATIO * a]
        if top is None:  # a clear cut well above a fine top (a tiny region's merge can look clearest)
            spans.append(range(TOP_RANGE[0], counts[0] // 3 + 1))
        for k in (k for span in spans for k in span):
            if gap(k) > best:
                best, at = gap(k), k
        if best < MIN_GAP:
            break
        counts = sorted([*counts, at])
    if cap == 1:
        return counts[:1]
    distinct = [counts[-1]]  # a level about as fine as the one below it tells a reader nothing more
    for k in reversed(counts[:-1]):
        if 1.5 * k <= distinct[0]:
            distinct.insert(0, k)
    return distinct


def find_regions(
    vectors: np.ndarray,
    xy: np.ndarray,
    graph: np.ndarray,
    *,
    levels: int = 4,
    split: int = 64,
    min_cluster_size: int | None = None,
    coarse: str = "hdbscan",
    coarse_k: int = 20,
    top_regions: int | None = None,
    seed: int = 0,
) -> Regions:
    """Regions of the landmarks at up to ``levels`` levels, coarse -> fine (see the module's docstring)."""
    n = len(vectors)
    min_size = min_cluster_size or max(MIN_REGION, n // 200)
    if coarse == "hdbscan":
        dense = coarse_regions(xy, graph, min_size)
    else:
        dense = _renumber(kmeans_regions(vectors, coarse_k, seed))
    fine = split_regions(vectors, dense, split, min_size, seed)
    m = int(fine.max()) + 1
    sizes = np.bincount(fine, minlength=m).astype(np.float64)
    centroids = np.zeros((m, vectors.shape[1]))
    np.add.at(centroids, fine, vectors)
    centroids /= sizes[:, None]
    links = np.zeros((m, m))
    np.add.at(links, (np.repeat(fine, graph.shape[1]), fine[graph].reshape(-1)), 1.0)  # kNN edges between regions
    within = np.zeros(m, dtype=np.int64)
    within[fine] = dense
    merges, costs = merge_tree(centroids, sizes, links + links.T, within)
    counts = choose_levels(costs, m, top_regions, max(1, levels), keep=int(dense.max()) + 1)
    of_fine = [_ordered(cut(merges, m, k) if k < m else np.arange(m, dtype=np.int32), sizes) for k in counts]
    nested = _nest(of_fine, sizes)
    labels = [level[fine] for level in nested]
    parents = [np.full(int(nested[0].max()) + 1, -1, dtype=np.int32)]
    for above, below in zip(nested, nested[1:]):
        parent = np.zeros(int(below.max()) + 1, dtype=np.int32)
        parent[below] = above
        parents.append(parent)
    return Regions(labels, parents)


def _ordered(assigned: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Cluster ids renumbered by size, largest first."""
    total = np.bincount(assigned, weights=sizes)
    rank = np.empty(len(total), dtype=np.int32)
    rank[np.argsort(-total, kind="stable")] = np.arange(len(total))
    return rank[assigned]


def _nest(levels: list[np.ndarray], sizes: np.ndarray) -> list[np.ndarray]:
    """Ids of every level renumbered so that each level's regions are grouped by parent (then by size)."""
    out = [levels[0]]
    for below in levels[1:]:
        above = out[-1]
        ids = np.unique(below)
        parent = np.array([above[below == i][0] for i in ids])
        size = np.array([sizes[below == i].sum() for i in ids])
        order = np.lexsort((-size, parent))
        rank = np.empty(int(below.max()) + 1, dtype=np.int32)
        rank[ids[order]] = np.arange(len(ids))
        out.append(rank[below])
    return out


def vote(landmark_labels: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, regions: int) -> np.ndarray:
    """Each row's region: the one its nearest landmarks (``neighbours``, ``weights``) weigh most for."""
    n, k = neighbours.shape
    scores = np.zeros((n, regions), dtype=np.float32)
    np.add.at(scores, (np.repeat(np.arange(n), k), landmark_labels[neighbours].reshape(-1)), weights.reshape(-1))
    return scores.argmax(axis=1).astype(np.int32)
