"""The global arrangement of the landmark layout: where the pieces of a disconnected kNN graph go.

When the landmarks' kNN graph falls apart into pieces (one per sub-group of a corpus of well separated
groups), UMAP has no edge between the pieces and places them with no regard to how far apart they are in
latent space (measured: 12 groups x 4 sub-groups, the graph in 48 pieces; a sub-group's 3 nearest
sub-groups on umap-learn's map were its own group's 0.5 of the time). ``arrange_pieces`` keeps UMAP's
layout inside each piece and moves each piece as a whole: the pieces' centroids (in latent space) are laid
out in 2-D by their own small t-SNE, so that pieces near in latent space are near on the map; up to
``POLISH_BELOW`` pieces, that layout is polished for each piece's 3 nearest and scaled up as a whole until no
two pieces' discs overlap (more pieces: pushed apart pairwise). A connected graph is left as UMAP laid it out.
"""

from __future__ import annotations

import numpy as np

MIN_PIECE = 5  # pieces smaller than this (outliers) are moved beside the piece nearest them in latent space
GAP = 1.15  # discs of two pieces end at least this factor of their radii apart
CENTROID_PERPLEXITY = 4  # the centroids' own t-SNE: about a piece's 4 nearest pieces weigh in (a sub-group's siblings)
CENTROID_RESTARTS = 4  # t-SNE runs from random starts; the one of lowest KL divergence (its own objective) is kept
# (measured on tests/map/corpora.subspace_groups, 38 pieces: a piece's 3 nearest pieces kept 0.89-0.90 with the
# lowest KL, 0.75-0.83 on the worst starts; UMAP of the centroids, 5 neighbours: 0.78)
RESTARTS_BELOW = 500  # above this many pieces one t-SNE run (each costs seconds)
POLISH_BELOW = 100  # up to this many pieces the t-SNE layout is polished for their 3 nearest (O(pieces^3) a step)
POLISH_STEPS = 3000  # (measured on subspace_groups, 5k sample, 38 pieces: 3 nearest kept 0.91 -> 0.99, ~4 s)


def graph_pieces(graph: np.ndarray) -> tuple[int, np.ndarray]:
    """(count, piece of each row) of the kNN ``graph`` (row -> neighbour indices), as an undirected graph."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    n, k = graph.shape
    edges = csr_matrix((np.ones(n * k, dtype=np.int8), (np.repeat(np.arange(n), k), graph.reshape(-1))), (n, n))
    count, piece = connected_components(edges, directed=False)
    return int(count), piece.astype(np.int32)


def _centroid_layout(centroids: np.ndarray, seed: int) -> np.ndarray:
    """2-D positions of the pieces' centroids keeping each one's few nearest: t-SNE (a neighbour-retrieval
    objective, Euclidean as the regions' measure; the run of lowest KL divergence among a few seeded random
    starts); PCA alone for a handful."""
    from sklearn.manifold import TSNE

    from pipeline.map.layout import pca_layout

    if len(centroids) < 8:
        return pca_layout(centroids).astype(np.float64)
    best, layout = np.inf, None
    for restart in range(CENTROID_RESTARTS if len(centroids) <= RESTARTS_BELOW else 1):
        model = TSNE(
            2,
            perplexity=min(CENTROID_PERPLEXITY, (len(centroids) - 1) / 3),
            init="random",
            random_state=seed + restart,
            max_iter=2000,
        )
        xy = model.fit_transform(centroids)
        if model.kl_divergence_ < best:
            best, layout = model.kl_divergence_, xy
    layout = np.asarray(layout, dtype=np.float64)
    return _polish(centroids, layout, seed) if len(centroids) <= POLISH_BELOW else layout


def nearest_points(points: np.ndarray, k: int = 3) -> np.ndarray:
    """Each point's ``k`` nearest other points (Euclidean; ties in index order): the regions' measure
    (pipeline.map.quality.regions_kept) and the polish's target."""
    d = ((points[:, None] - points[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def _rank_score(latent_nearest: np.ndarray, xy: np.ndarray) -> tuple[int, int]:
    """(how many of each piece's latent nearest are among its as many nearest on the map, minus the sum of
    their ranks on the map, capped): the first is the measure kept; the second breaks its ties smoothly."""
    d = ((xy[:, None] - xy[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    rank = (d[:, None, :] < np.take_along_axis(d, latent_nearest, 1)[:, :, None]).sum(-1)
    k = latent_nearest.shape[1]
    return int((rank < k).sum()), -int(np.minimum(rank, 3 * k).sum())


def _polish(centroids: np.ndarray, xy: np.ndarray, seed: int) -> np.ndarray:
    """``xy`` with single pieces moved (seeded random steps of a third of their nearest neighbour's distance)
    only where a move improves ``_rank_score``: t-SNE's objective weighs all neighbours softly, so siblings
    at nearly equal distances (a 4th within a few % of the 3rd) come out in either order; this fixes the 3
    nearest and keeps everything t-SNE got right (no step may lose a kept neighbour's count)."""
    latent, rng, xy = nearest_points(centroids), np.random.default_rng(seed), xy.copy()
    scale = np.sqrt(((xy - xy[nearest_points(xy, 1)[:, 0]]) ** 2).sum(1))
    current = _rank_score(latent, xy)
    for _ in range(POLISH_STEPS):
        i = rng.integers(len(xy))
        old = xy[i].copy()
        xy[i] = old + rng.normal(0, 0.3, 2) * scale[i]
        score = _rank_score(latent, xy)
        if score > current:
            current = score
        else:
            xy[i] = old
    return xy


def _scale_apart(centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """``centres`` scaled up as a whole until no two discs (``radii``) overlap: every distance grows by the
    same factor, so each piece's nearest pieces stay its nearest (pushing pairs apart locally lost up to 0.08
    of them after the polish)."""
    d = np.sqrt(((centres[:, None] - centres[None]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    return centres * float(((radii[:, None] + radii[None]) * GAP / np.maximum(d, 1e-12)).max())


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


def arrange_pieces(xy: np.ndarray, vectors: np.ndarray, graph: np.ndarray, seed: int = 0) -> tuple[np.ndarray, int]:
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
    apart = _scale_apart if len(big) <= POLISH_BELOW else _separate  # many pieces: scaling alone leaves gaps
    placed = apart(_centroid_layout(centroids[big], seed), np.maximum(radius[big], 1e-3))
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
