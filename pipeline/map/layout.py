"""The map's layout: landmarks laid out in 2-D, every other row placed from its nearest landmarks.

Plain callables on NumPy arrays (no Ray, no config): ``sample_rows`` picks the landmarks (seeded),
``knn_graph`` is their exact kNN graph with FAISS, ``umap_layout`` lays them out with umap-learn (or
cuML's UMAP when it imports and a GPU is present), ``pca_layout`` is the linear alternative, and a
``LandmarkIndex`` places any batch of vectors from its nearest landmarks: ``cell`` (the default) puts a row in
its nearest landmark's cell, a short step toward its nearest landmarks' weighted average (``cell_positions``);
``attract`` takes that weighted average (sharp UMAP-style weights), then ``refine_positions``: epochs of
UMAP's attraction to those landmarks, held fixed (docs/map.md, "How the layout is made").
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass

import faiss
import numpy as np

from pipeline.errors import LatentError

log = logging.getLogger(__name__)

PLACEMENTS = ("cell", "attract")


def sample_rows(n: int, size: int, seed: int) -> np.ndarray:
    """``min(size, n)`` distinct rows of ``0..n-1``, sorted, the same for the same (n, size, seed)."""
    if size >= n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=size, replace=False)).astype(np.int64)


def _flat_index(dim: int, metric: str) -> faiss.Index:
    return faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)


def to_distances(scores: np.ndarray, metric: str) -> np.ndarray:
    """FAISS scores as distances: cosine distance (1 - ip) for ip, Euclidean for l2 (FAISS gives squared)."""
    if metric == "ip":
        return np.clip(1.0 - scores, 0.0, None).astype(np.float32)
    return np.sqrt(np.clip(scores, 0.0, None)).astype(np.float32)


def knn_graph(vectors: np.ndarray, k: int, metric: str = "ip") -> tuple[np.ndarray, np.ndarray]:
    """Exact ``k`` nearest neighbours of each row among the rows (itself first): (indices, distances)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(k, len(vectors))
    index = _flat_index(vectors.shape[1], metric)
    index.add(vectors)
    scores, indices = index.search(vectors, k)
    distances = to_distances(scores, metric)
    # ties can put a duplicate before the row itself: umap-learn expects the row first, at distance 0
    for r in np.flatnonzero(indices[:, 0] != np.arange(len(vectors))):
        others = [(j, d) for j, d in zip(indices[r], distances[r]) if j != r][: k - 1]
        indices[r] = [r, *(j for j, _ in others)]
        distances[r] = [0.0, *(d for _, d in others)]
    distances[:, 0] = 0.0  # a row is at distance 0 from itself (1 - ip rounds to ~1e-7)
    return indices.astype(np.int64), distances


def cuml_available() -> bool:
    """cuML imports and a GPU is visible."""
    try:
        import cuml  # noqa: F401
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def umap_layout(
    vectors: np.ndarray,
    *,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    metric: str = "ip",
    seed: int = 0,
    device: str = "cpu",
    knn: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """2-D UMAP layout (float32, n x 2) of ``vectors``; the kNN graph is FAISS's (``knn`` or computed here).

    ``device="cuda"`` uses cuML's UMAP (which builds its own graph on the GPU). A fixed ``seed`` makes
    umap-learn deterministic (it then runs its optimisation on one thread)."""
    n = len(vectors)
    if n < 4:
        raise LatentError(f"a UMAP layout needs at least 4 rows (got {n}); use map.method=pca")
    n_neighbors = max(2, min(n_neighbors, n - 1))
    if device == "cuda":
        from cuml.manifold import UMAP as CumlUMAP

        model = CumlUMAP(n_neighbors=n_neighbors, min_dist=min_dist, metric="cosine", random_state=seed)
        return np.asarray(model.fit_transform(np.asarray(vectors, np.float32)), dtype=np.float32)
    import umap

    indices, distances = knn if knn is not None else knn_graph(vectors, n_neighbors, metric)
    model = umap.UMAP(
        n_neighbors=n_neighbors,
        min_dist=min_dist,
        metric="cosine" if metric == "ip" else "euclidean",
        random_state=seed,
        precomputed_knn=(indices[:, :n_neighbors], distances[:, :n_neighbors], None),
        n_jobs=1,
        low_memory=True,
    )
    with warnings.catch_warnings():  # our FAISS graph has no NNDescent index: transform() is never used
        warnings.filterwarnings("ignore", message=r"precomputed_knn\[2\]", category=UserWarning)
        xy = model.fit_transform(np.asarray(vectors, np.float32))
    return np.asarray(xy, dtype=np.float32)


@dataclass
class PcaProjection:
    """Rows projected on the landmarks' two principal axes."""

    mean: np.ndarray  # (dim,)
    axes: np.ndarray  # (2, dim)

    @classmethod
    def fit(cls, vectors: np.ndarray) -> PcaProjection:
        mean = vectors.mean(axis=0, dtype=np.float64)
        _, _, vt = np.linalg.svd(vectors - mean, full_matrices=False)
        return cls(mean.astype(np.float32), vt[:2].astype(np.float32))

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return ((vectors - self.mean) @ self.axes.T).astype(np.float32)


def pca_layout(vectors: np.ndarray) -> np.ndarray:
    return PcaProjection.fit(np.asarray(vectors, np.float32))(np.asarray(vectors, np.float32))


PLACE_TEMPERATURE = 0.2  # sharper than UMAP's own weights: rows land nearer their nearest landmarks
# (measured: neighbourhood preservation of placed rows 0.134 at 0.1-0.2 against 0.121 at 1.0)
PLACE_EPOCHS = 30  # attraction epochs after the weighted average (0: the weighted average alone)
PLACE_LEARNING_RATE = 0.25  # umap-learn's transform uses its initial rate / 4


CELL_NEIGHBOURS = 8  # landmarks whose weighted average gives a cell-placed row its direction
CELL_SPREAD = 0.1  # how far toward that average a row moves from its nearest landmark
# (measured on 20k real word vectors, 10 % landmarks: a row's 10 nearest among all rows kept on the map 0.168,
# umap-learn's full fit 0.165, attract 0.071; 0.112 at a spread of 0.25; docs/benchmarks.md, "Cell placement")


def cell_positions(distances: np.ndarray, around: np.ndarray, spread: float = CELL_SPREAD) -> np.ndarray:
    """Rows placed in their nearest landmark's cell: from the nearest landmark's position (``around[:, 0]``),
    ``spread`` of the way toward the weighted average of the ``CELL_NEIGHBOURS`` nearest (UMAP-style weights).
    Rows that share a nearest landmark stay together, ordered among themselves by their other neighbours."""
    k = min(CELL_NEIGHBOURS, distances.shape[1])
    weights = membership_weights(distances[:, :k], temperature=1.0)
    average = np.einsum("nk,nkd->nd", weights, around[:, :k])
    return (around[:, 0] + np.float32(spread) * (average - around[:, 0])).astype(np.float32)


def membership_weights(distances: np.ndarray, temperature: float = PLACE_TEMPERATURE) -> np.ndarray:
    """UMAP-style weights of each row's neighbours: ``exp(-(d - d_min) / (sigma * temperature))``, sigma
    the row's mean distance above its nearest; rows summing to 1."""
    d = distances.astype(np.float64)
    rho = d[:, :1]
    sigma = np.maximum((d - rho).mean(axis=1, keepdims=True), 1e-6) * temperature
    w = np.exp(-(d - rho) / sigma)
    return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


def fuzzy_memberships(distances: np.ndarray, iterations: int = 64) -> np.ndarray:
    """UMAP's fuzzy membership of new rows' ``k`` landmark neighbours, as umap-learn's ``transform`` computes
    it (``smooth_knn_dist`` with local connectivity 0, vectorised): ``exp(-d / sigma)``, sigma found by
    bisection so that the memberships of neighbours 2..k sum to ``log2(k)``."""
    d = distances.astype(np.float64)
    k = d.shape[1]
    target = np.log2(k) if k > 1 else 1.0
    rest = d[:, 1:] if k > 1 else d
    lo, hi = np.zeros(len(d)), np.full(len(d), np.inf)
    sigma = np.ones(len(d))
    for _ in range(iterations):
        total = np.exp(-rest / sigma[:, None]).sum(axis=1)
        wide = total > target
        hi = np.where(wide, sigma, hi)
        lo = np.where(wide, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2, (lo + hi) / 2)
    sigma = np.maximum(sigma, 1e-3 * max(float(d.mean()), 1e-12))  # umap-learn's floor on sigma
    return np.exp(-d / sigma[:, None]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def umap_curve(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's ``a``, ``b``: ``1 / (1 + a d^(2b))`` fitted to 1 below ``min_dist``, ``exp(-(d - min_dist) / spread)``
    above (umap-learn's ``find_ab_params``)."""
    from scipy.optimize import curve_fit

    d = np.linspace(0, spread * 3, 300)
    target = np.where(d < min_dist, 1.0, np.exp(-(d - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2 * b)), d, target)
    return float(a), float(b)


def refine_positions(
    xy: np.ndarray,
    neighbour_xy: np.ndarray,
    memberships: np.ndarray,
    *,
    epochs: int = PLACE_EPOCHS,
    min_dist: float = 0.1,
    learning_rate: float = PLACE_LEARNING_RATE,
) -> np.ndarray:
    """Rows' positions ``xy`` (n x 2) moved by ``epochs`` of UMAP's attraction to their fixed landmarks
    (``neighbour_xy``: n x k x 2, with ``memberships``): the gradient of UMAP's cross-entropy on each edge,
    ``-2ab d^(2(b-1)) / (1 + a d^(2b)) (y - y_j)`` clipped to 4 like umap-learn's, weighted by the edge's
    membership (its expected sampling rate), learning rate decaying linearly to 0. No repulsion (measured:
    umap-learn's negative sampling against fixed landmarks lowers preservation), no randomness: each row
    depends only on its own landmarks, so placement stays per-row, order-free and reproducible."""
    if epochs <= 0 or not len(xy):
        return xy
    a, b = umap_curve(min_dist)
    y = xy.astype(np.float32, copy=True)
    rate = (memberships / np.maximum(memberships.max(axis=1, keepdims=True), 1e-12))[..., None].astype(np.float32)
    for epoch in range(epochs):
        alpha = learning_rate * (1.0 - epoch / epochs)
        diff = y[:, None, :] - neighbour_xy
        d2 = np.maximum((diff * diff).sum(axis=-1, keepdims=True), 1e-12)
        power = d2 ** np.float32(b - 1.0)  # one power per edge: d^(2b) = power * d2
        pull = np.float32(-2.0 * a * b) * power / (1.0 + np.float32(a) * power * d2)
        y += np.float32(alpha) * (np.clip(pull * diff, -4.0, 4.0) * rate).sum(axis=1)
    return y


class LandmarkIndex:
    """The landmarks' vectors in a FAISS index (exact for small sets, IVF above ``exact_below``), with their
    2-D positions: ``nearest`` finds a batch's nearest landmarks, ``place`` its 2-D positions.

    Picklable (the FAISS index travels serialized), so Ray tasks can take it as an argument."""

    def __init__(
        self,
        vectors: np.ndarray,
        xy: np.ndarray,
        metric: str = "ip",
        k: int = 8,
        exact_below: int = 20000,
        seed: int = 0,
        epochs: int = PLACE_EPOCHS,
        min_dist: float = 0.1,
        placement: str = "cell",
    ) -> None:
        if placement not in PLACEMENTS:
            raise LatentError(f"map.place={placement}: one of {', '.join(PLACEMENTS)}")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        n, dim = vectors.shape
        self.placement = placement
        self.metric = metric
        self.k = min(k, n)
        self.epochs, self.min_dist = epochs, min_dist
        self.xy = np.ascontiguousarray(xy, dtype=np.float32)
        if n < exact_below:
            index = _flat_index(dim, metric)
        else:  # IVF over the landmarks: ~4 sqrt(n) lists, 16 probed (placement only needs near neighbours)
            nlist = int(4 * np.sqrt(n))
            quantizer = _flat_index(dim, metric)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT if metric == "ip" else 1)
            index.cp.seed = seed
            index.cp.min_points_per_centroid = 5  # ~4 sqrt(n) lists have fewer than FAISS's 39 points each: fine here
            index.train(vectors)
            index.nprobe = 16
        index.add(vectors)
        self._index = index

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_index"] = faiss.serialize_index(self._index)
        return state

    def __setstate__(self, state: dict) -> None:
        state["_index"] = faiss.deserialize_index(state["_index"])
        self.__dict__.update(state)
        if isinstance(self._index, faiss.IndexIVF):
            self._index.nprobe = 16

    def __len__(self) -> int:
        return self._index.ntotal

    def nearest(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(landmark indices, distances) of each row's ``k`` nearest landmarks, nearest first."""
        scores, indices = self._index.search(np.ascontiguousarray(vectors, dtype=np.float32), self.k)
        distances = to_distances(scores, self.metric)
        missing = indices < 0  # IVF found fewer than k: repeat the nearest
        if missing.any():
            indices = np.where(missing, indices[:, :1], indices)
            distances = np.where(missing, distances[:, :1], distances)
        return indices, distances

    def place(self, vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(xy, neighbour indices, weights): each row's position from its nearest landmarks (``cell_positions``,
        or for ``attract`` the weighted average of theirs, then ``epochs`` of UMAP's attraction to them:
        ``refine_positions``), and the weights its region is voted with."""
        indices, distances = self.nearest(vectors)
        weights = membership_weights(distances)
        around = self.xy[indices]
        if self.placement == "cell":
            return cell_positions(distances, around), indices, weights
        xy = np.einsum("nk,nkd->nd", weights, around).astype(np.float32)
        memberships = fuzzy_memberships(distances)
        xy = refine_positions(xy, around, memberships, epochs=self.epochs, min_dist=self.min_dist)
        return xy, indices, weights
