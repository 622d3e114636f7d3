"""Placement quality at small scale: how well rows placed from landmarks keep their neighbours, against
umap-learn's full fit of the quality sample alone (the figure map.json compares with) and, at equal size,
umap-learn's full fit of every row measured on the same sample.

    python bench/bench_map_place.py                       # 50k x 512, 5k landmarks, 5k-row quality sample
    python bench/bench_map_place.py --more-landmarks 10000 --anchors 15000 --full-corpus
    python bench/bench_map_place.py --n 40000 --landmarks 4000 --sample 4000 --clusters 200
    python bench/bench_map_place.py --words --landmarks 2000 --sample 2000   # 20k real word vectors

Each placement is measured at two scales: the sample's own neighbours (each sample row's 10 nearest among the
sample, as map.json measures), and every row's (a seeded 10,000 rows' 10 nearest among all rows, the finest
scale a map is read at), the latter against umap-learn's full fit of all rows with ``--full-corpus``.

The corpus is the map benchmark's (ClusteredSpec, 512-d, --clusters in 20 groups); landmarks and the quality
sample are drawn as `latent map` draws them (seeds 0 and 1), laid out by the same umap_layout, and rows of
the sample that are landmarks (or anchors) keep their own position. Placement speed: rows per CPU-second,
one thread, 8192-row batches. Layout costs are CPU-seconds of this process (umap-learn and FAISS on one
thread).

Variants beyond the default placement (experiments, not in `latent map`):
- ``--more-landmarks N``: the default placement from a UMAP of N landmarks instead;
- ``--anchors N``: N more rows ("anchors") placed from the landmarks, then refined jointly among
  landmarks + anchors (kNN among them, landmarks fixed): (a) 200 epochs of attraction only, (b) umap-learn's
  own SGD with negative sampling (``optimize_layout_euclidean``, 200 epochs, rate 1); then every other row
  is placed by the default placement from landmarks + anchors together;
- ``--full-corpus``: umap-learn's full fit of all n rows (the equal-size reference), measured on the sample.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.map.layout import (  # noqa: E402
    PLACE_EPOCHS,
    LandmarkIndex,
    fuzzy_memberships,
    knn_graph,
    sample_rows,
    umap_curve,
    umap_layout,
)
from pipeline.map.quality import neighbourhood_preservation, reference_preservation  # noqa: E402
from tests.synthetic import ClusteredSpec, clustered_unit_vectors  # noqa: E402


def attract_jointly(vectors: np.ndarray, xy: np.ndarray, fixed: np.ndarray, epochs: int = 200) -> np.ndarray:
    """Free rows pulled by UMAP's attraction to their 15 nearest among all rows, all moving at once (full
    batch, rate 0.25 decaying to 0, weights: UMAP's fuzzy memberships); fixed rows stay."""
    indices, distances = knn_graph(vectors, 16)
    free = np.flatnonzero(~fixed)
    indices, distances = indices[free, 1:], distances[free, 1:]
    memberships = fuzzy_memberships(distances)
    rate = (memberships / memberships.max(axis=1, keepdims=True))[..., None]
    a, b = umap_curve(0.1)
    y = xy.astype(np.float32, copy=True)
    for epoch in range(epochs):
        diff = y[free][:, None, :] - y[indices]
        d2 = np.maximum((diff * diff).sum(axis=-1, keepdims=True), 1e-12)
        power = d2 ** np.float32(b - 1)
        pull = np.float32(-2 * a * b) * power / (1 + np.float32(a) * power * d2)
        y[free] += np.float32(0.25 * (1 - epoch / epochs)) * (np.clip(pull * diff, -4, 4) * rate).sum(axis=1)
    return y


def umap_sgd_jointly(vectors: np.ndarray, xy: np.ndarray, fixed: np.ndarray, epochs: int = 200) -> np.ndarray:
    """umap-learn's SGD (attraction along its fuzzy graph, negative sampling) from ``xy``, fixed rows held:
    only edges whose head is free are sampled and only heads move."""
    import scipy.sparse
    from umap.layouts import optimize_layout_euclidean
    from umap.umap_ import fuzzy_simplicial_set, make_epochs_per_sample

    n = len(vectors)
    indices, distances = knn_graph(vectors, 15)
    rng = np.random.RandomState(0)
    graph, _, _ = fuzzy_simplicial_set(np.empty((n, 1)), 15, rng, "cosine", knn_indices=indices, knn_dists=distances)
    graph = scipy.sparse.coo_matrix(graph)
    keep = (graph.data >= graph.data.max() / epochs) & ~fixed[graph.row]
    a, b = umap_curve(0.1)
    y = np.array(xy, np.float32, order="C")
    head, tail = graph.row[keep].astype(np.int32), graph.col[keep].astype(np.int32)
    state = rng.randint(-(2**31) + 1, 2**31 - 2, 3).astype(np.int64)
    per_sample = make_epochs_per_sample(graph.data[keep], epochs)
    optimize_layout_euclidean(y, y, head, tail, epochs, n, per_sample, a, b, state, move_other=False)
    return y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--landmarks", type=int, default=5000)
    parser.add_argument("--sample", type=int, default=5000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--more-landmarks", type=int, default=0, help="also: the default placement from N landmarks")
    parser.add_argument("--anchors", type=int, default=0, help="also: N anchors refined jointly, rows placed from them")
    parser.add_argument("--full-corpus", action="store_true", help="also: umap-learn's full fit of all n rows")
    parser.add_argument("--words", action="store_true", help="20k real word vectors (bench_promise.py) instead")
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    if args.words:
        from bench_promise import words

        vectors = np.ascontiguousarray(words()[:20000], dtype=np.float32)
        args.n = len(vectors)
    else:
        vectors = clustered_unit_vectors(args.n, ClusteredSpec(clusters=args.clusters))
    sample = sample_rows(args.n, args.sample, 1)
    reference, _ = reference_preservation(vectors[sample], queries=len(sample))
    print(
        f"{args.n} x {vectors.shape[1]}, {args.landmarks} landmarks, sample {args.sample}: "
        f"umap-learn full fit of the sample {reference:.4f}"
    )

    def report(name: str, xy_of_sample: np.ndarray, extra: str = "", every: np.ndarray | None = None) -> None:
        ours = neighbourhood_preservation(vectors[sample], xy_of_sample, queries=len(sample))
        line = f"{name}: {ours:.4f} = {ours / reference:.1%} of umap-learn's{extra}"
        if every is not None:  # every row's nearest among all rows
            line += f"; all rows: {neighbourhood_preservation(vectors, every, queries=min(args.n, 10000)):.4f}"
        print(line, flush=True)

    def place(
        rows: np.ndarray, xy: np.ndarray, k: int = 15, epochs: int = PLACE_EPOCHS, placement: str = "attract"
    ) -> tuple[np.ndarray, float, np.ndarray]:
        """The sample's positions (rows of ``rows`` keep theirs), rows per CPU-second of 40k placed rows, and
        every row's position."""
        index = LandmarkIndex(vectors[rows], xy, k=k, epochs=epochs, placement=placement)
        every = np.concatenate([index.place(vectors[i : i + 16384])[0] for i in range(0, args.n, 16384)])
        every[rows] = xy
        placed = every[sample]
        started = time.process_time()
        for first in range(0, min(args.n, 40000), 8192):
            index.place(vectors[first : first + 8192])
        return placed, min(args.n, 40000) / (time.process_time() - started), every

    def layout(size: int) -> tuple[np.ndarray, np.ndarray, float]:
        rows = sample_rows(args.n, size, 0)
        started = time.process_time()
        xy = umap_layout(vectors[rows], knn=knn_graph(vectors[rows], 16), seed=0)
        return rows, xy, time.process_time() - started

    rows, xy, seconds = layout(args.landmarks)
    print(f"landmark layout: {seconds:.0f} CPU-s")
    for placement, k, epochs in [("attract", 8, 0), ("attract", 15, 0), ("attract", 15, PLACE_EPOCHS), ("cell", 15, 0)]:
        placed, speed, every = place(rows, xy, k, epochs, placement)
        report(f"{placement} place_k={k:2d} epochs={epochs:2d}", placed, f"; {speed:.0f} rows/CPU-s", every)
    if args.more_landmarks:
        more, more_xy, seconds = layout(args.more_landmarks)
        placed, speed, _ = place(more, more_xy)
        report(
            f"{args.more_landmarks} landmarks (layout {seconds:.0f} CPU-s), default placement",
            placed,
            f"; {speed:.0f} rows/CPU-s",
        )
    if args.anchors:
        rest = np.setdiff1d(np.arange(args.n), rows)
        anchors = np.sort(np.random.default_rng(2).choice(rest, size=min(args.anchors, len(rest)), replace=False))
        both = np.concatenate([rows, anchors])
        order = np.argsort(both)
        fixed = np.r_[np.ones(len(rows), bool), np.zeros(len(anchors), bool)]
        first, _, _ = LandmarkIndex(vectors[rows], xy, k=15).place(vectors[anchors])
        for name, refine in [("attraction only", attract_jointly), ("umap-learn SGD", umap_sgd_jointly)]:
            started = time.process_time()
            refined = refine(vectors[both], np.concatenate([xy, first]), fixed)
            seconds = time.process_time() - started
            placed, speed, _ = place(both[order], refined[order])
            report(
                f"{args.anchors} anchors, {name} ({seconds:.0f} CPU-s), rows from both",
                placed,
                f"; {speed:.0f} rows/CPU-s",
            )
    if args.full_corpus:
        started = time.process_time()
        full = umap_layout(vectors, knn=knn_graph(vectors, 16), seed=0)
        seconds = time.process_time() - started
        report(f"umap-learn full fit of all {args.n} rows ({seconds:.0f} CPU-s)", full[sample], every=full)


if __name__ == "__main__":
    main()
