"""The global arrangement of the landmark layout: where the pieces of a disconnected kNN graph go.

When the landmarks' kNN graph falls apart into pieces (one per sub-group of a corpus of well separated
groups), UMAP has no edge between the pieces and places them with no regard to how far apart they are in
latent space (measured: 12 groups x 4 sub-groups, the graph in 48 pieces; a sub-group's 3 nearest
sub-groups on umap-learn's map were its own group's 0.5 of the time). ``arrange_pieces`` keeps UMAP's
layout inside each piece and moves each piece as a whole: the pieces' centroids (in latent space) are laid
out in 2-D by their own small UMAP, so that pieces near in latent space are near on the map, then pushed
apart until no two pieces' discs overlap. A connected graph is left as UMAP laid it out.
"""

from __future__ import annotations

import warnings

import numpy as np

MIN_PIECE = 5  # pieces smaller than this (outliers) are moved beside the piece nearest them in latent space
GAP = 1.15  # discs of two pieces end at least this factor of their radii apart
CENTROID_NEIGHBOURS = 5  # the centroids' own UMAP: their few nearest (measured: 5 keeps a sub-group's 3 nearest
# sub-groups better than 10: 0.79 against 0.61 on tests/map/corpora.subspace_groups, 1.00 against 0.98 on
# nested_gaussians)


def graph_pieces(graph: np.ndarray) -> tuple[int, np.ndarray]:
    """(count, piece of each row) of the kNN ``graph`` (row -> neighbour indices), as an undirected graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n, k = graph.shape
    edges = csr_matrix((np.ones(n * k, dtype=np.int8), (np.repeat(np.arange(n), k), graph.reshape(-1))), (n, n))
    count, piece = connected_components(edges, directed=False)
    return int(count), piece.astype(np.int32)


def _centroid_layout(centroids: np.ndarray, metric: str, seed: int) -> np.ndarray:
    """2-D positions of the pieces' centroids keeping each one's nearest (UMAP of the centroids, from their
    PCA; PCA alone for a handful)."""
    from pipeline.map.layout import pca_layout

    start = pca_layout(centroids).astype(np.float64)
    if len(centroids) < 8:
        return start
    import umap

    with warnings.catch_warnings():  # small-n and n_jobs notices
        warnings.simplefilter("ignore")
        model = umap.UMAP(
            n_neighbors=min(CENTROID_NEIGHBOURS, len(centroids) - 1),
            min_dist=0.5,
            metric="cosine" if metric == "ip" else "euclidean",
            random_state=seed,
            init=start / max(np.abs(start).max(), 1e-12),
            n_jobs=1,
        )
        return np.asarray(model.fit_transform(centroids), dtype=np.float64)


def _separate(centres: np.ndarray, radii: np.ndarray, iterations: int = 200) -> np.ndarray:
    """``centres`` scaled so that neighbouring discs (``radii``) just clear each other, then pushed apart
    pairwise until none overlap: the arrangement is kept, the overlaps removed."""
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    nearest = d.argmin(axis=1)
    need = (radii + radii[nearest]) * GAP / np.maximum(d[np.arange(len(d)), nearest], 1e-12)
    p = centres * float(np.median(need))
    for _ in range(iterations):
        delta = p[:, None] - p[None]
        dist = np.sqrt((delta**2).sum(-1))
        np.fill_diagonal(dist, np.inf)
        overlap = (radii[:, None] + radii[None]) * GAP - dist
        if (overlap <= 1e-9).all():
            break
        push = np.where(overlap > 0, overlap / 2, 0.0) / np.maximum(dist, 1e-12)
        p += (push[..., None] * np.nan_to_num(delta, posinf=0.0, neginf=0.0)).sum(axis=1)
    return p


def arrange_pieces(
    xy: np.ndarray, vectors: np.ndarray, graph: np.ndarray, metric: str = "ip", seed: int = 0
) -> tuple[np.ndarray, int]:
    """(layout, pieces): UMAP's ``xy`` of ``vectors`` with each piece of their kNN ``graph`` moved as a whole
    to where its centroid's layout puts it (see the module's docstring); unchanged when the graph is connected."""
    count, piece = graph_pieces(graph)
    if count == 1:
        return xy, 1
    sizes = np.bincount(piece, minlength=count)
    centroids = np.zeros((count, vectors.shape[1]), dtype=np.float64)
    np.add.at(centroids, piece, vectors)
    centroids /= sizes[:, None]
    big = np.flatnonzero(sizes >= MIN_PIECE)
    if len(big) < 2:
        return xy, count
    xy = np.asarray(xy, dtype=np.float64)
    centres = np.zeros((count, 2))
    np.add.at(centres, piece, xy)
    centres /= sizes[:, None]
    local = xy - centres[piece]
    reach = np.zeros(count)
    np.maximum.at(reach, piece, np.sqrt((local**2).sum(1)))
    # each piece rescaled to a disc whose area follows its rows (UMAP's own scale of a piece is arbitrary)
    radius = np.sqrt(sizes / sizes.max())
    local *= (radius / np.maximum(reach, 1e-12))[piece, None]
    placed = _separate(_centroid_layout(centroids[big], metric, seed), np.maximum(radius[big], 1e-3))
    target = np.zeros((count, 2))
    target[big] = placed
    small = np.flatnonzero(sizes < MIN_PIECE)
    if len(small):  # beside the big piece nearest in latent space, at its rim
        d = ((centroids[small, None] - centroids[None, big]) ** 2).sum(-1)
        host = big[d.argmin(axis=1)]
        angle = np.random.default_rng(seed).uniform(0, 2 * np.pi, len(small))
        rim = radius[host] * 1.05
        target[small] = target[host] + np.stack([np.cos(angle), np.sin(angle)], 1) * rim[:, None]
    return (target[piece] + local).astype(np.float32), count
