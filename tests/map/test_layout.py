"""Layout pieces on NumPy arrays: sampling, the kNN graph, placement from landmarks, regions, preservation."""

from __future__ import annotations

import pickle

import numpy as np
from synthetic import ClusteredSpec, clustered_unit_vectors

from map.conftest import clustered
from pipeline.map.layout import (
    CELL_NEIGHBOURS,
    CELL_SPREAD,
    PLACE_EPOCHS,
    LandmarkIndex,
    PcaProjection,
    fuzzy_memberships,
    knn_graph,
    membership_weights,
    sample_rows,
    umap_curve,
    umap_layout,
)
from pipeline.map.place import Placer
from pipeline.map.quality import neighbourhood_preservation, pick_queries, preservation_among_all
from pipeline.map.regions import find_regions, vote


def test_sample_is_seeded_sorted_and_distinct():
    a, b, c = sample_rows(1000, 100, 3), sample_rows(1000, 100, 3), sample_rows(1000, 100, 4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a)) == 100 and np.all(np.diff(a) > 0)
    assert np.array_equal(sample_rows(10, 100, 0), np.arange(10))


def test_knn_graph_puts_each_row_first_at_distance_zero():
    vectors, _ = clustered(300)
    vectors = np.concatenate([vectors, vectors[:5]])  # exact duplicates tie with their original
    indices, distances = knn_graph(vectors, 6)
    assert np.array_equal(indices[:, 0], np.arange(len(vectors)))
    assert np.all(distances[:, 0] == 0) and np.all(np.diff(distances[:, 1:], axis=1) >= -1e-6)


def test_a_landmark_is_placed_on_itself_and_rows_between_landmarks_between_them():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((50, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    xy = rng.uniform(-10, 10, (50, 2)).astype(np.float32)  # unrelated to the vectors: attract's average only
    index = LandmarkIndex(vectors, xy, k=4, placement="attract")
    placed, neighbours, weights = index.place(vectors[:10])
    on_map = ((placed[:, None, :] - xy[None]) ** 2).sum(-1).argmin(axis=1)
    assert np.array_equal(on_map, np.arange(10))  # a landmark's own vector lands nearest its own position
    assert np.allclose(weights.sum(axis=1), 1)
    mid = vectors[0] + vectors[1]
    placed, neighbours, _ = index.place((mid / np.linalg.norm(mid))[None])
    assert set(neighbours[0, :2]) == {0, 1}
    lo, hi = np.minimum(xy[0], xy[1]) - 1e-3, np.maximum(xy[0], xy[1]) + 1e-3
    assert np.all(placed[0] >= lo - 5) and np.all(placed[0] <= hi + 5)  # near the segment between them


def test_landmark_index_survives_pickling_including_ivf():
    vectors, _ = clustered(2500)
    xy = np.random.default_rng(1).uniform(size=(2500, 2)).astype(np.float32)
    index = LandmarkIndex(vectors, xy, k=5, exact_below=1000)  # IVF above 1000
    copy = pickle.loads(pickle.dumps(index))
    a, b = index.place(vectors[:100]), copy.place(vectors[:100])
    np.testing.assert_array_equal(a[0], b[0])


def test_membership_weights_prefer_nearer_landmarks():
    w = membership_weights(np.array([[0.1, 0.2, 0.4]], np.float32))
    assert w[0, 0] > w[0, 1] > w[0, 2] and np.isclose(w.sum(), 1)


def test_regions_nest_and_rows_vote_with_their_landmarks():
    vectors, groups = clustered(1200)
    xy = PcaProjection.fit(vectors)(vectors)
    graph, _ = knn_graph(vectors, 10)
    regions = find_regions(vectors, xy, graph, levels=3, split=4, coarse="kmeans", coarse_k=5)
    assert 1 <= regions.levels <= 3  # map.levels is a cap: the data decides
    for level in range(1, regions.levels):
        parents = regions.parents[level]
        assert np.array_equal(parents[regions.landmark_labels[level]], regions.landmark_labels[level - 1])
    labels = np.array([0, 1, 1])
    neighbours = np.array([[0, 1, 2], [0, 0, 1]])
    weights = np.array([[0.5, 0.3, 0.2], [0.3, 0.3, 0.4]], np.float32)
    assert vote(labels, neighbours, weights, 2).tolist() == [0, 0]


def test_placer_keeps_landmark_rows_exactly():
    vectors, _ = clustered(500)
    rows = sample_rows(500, 100, 0)
    xy = np.random.default_rng(2).uniform(size=(100, 2)).astype(np.float32)
    labels = [np.zeros(100, np.int32), np.arange(100, dtype=np.int32) % 3]
    parents = [np.array([-1], np.int32), np.zeros(3, np.int32)]
    placer = Placer(LandmarkIndex(vectors[rows], xy, k=5), rows, labels, parents)
    placed, levels = placer.place(vectors, np.arange(500))
    np.testing.assert_array_equal(placed[rows], xy)
    np.testing.assert_array_equal(levels[1][rows], labels[1])
    assert np.all(levels[0] == 0)


def test_preservation_is_one_for_an_isometric_map_and_low_for_a_random_one():
    rng = np.random.default_rng(0)
    flat = rng.uniform(size=(800, 2)).astype(np.float32)
    vectors = np.concatenate([flat, np.zeros((800, 3), np.float32)], axis=1)
    assert neighbourhood_preservation(vectors, flat, metric="l2", queries=200) > 0.99
    shuffled = flat[rng.permutation(800)]
    assert neighbourhood_preservation(vectors, shuffled, metric="l2", queries=200) < 0.1


def test_fuzzy_memberships_and_curve_match_umap_learn():
    from umap.umap_ import find_ab_params, smooth_knn_dist

    d = np.sort(np.random.default_rng(0).uniform(0.2, 0.9, (40, 15)), axis=1).astype(np.float32)
    sigmas, rhos = smooth_knn_dist(d, 15.0, local_connectivity=0.0)  # what umap-learn's transform uses
    expected = np.exp(-np.maximum(d - rhos[:, None], 0) / sigmas[:, None])
    np.testing.assert_allclose(fuzzy_memberships(d), expected, atol=1e-5)
    np.testing.assert_allclose(umap_curve(0.1), find_ab_params(1.0, 0.1), rtol=1e-4)


def test_refinement_keeps_preserving_more_neighbours_than_the_weighted_average():
    """The benchmark's setting in small: a seeded clustered corpus, a tenth of it as landmarks laid out by
    UMAP, preservation measured on a seeded sample as large as the landmarks (landmarks keep their place)."""
    spec = ClusteredSpec(dim=64, clusters=400, groups=20, seed=3)
    vectors = clustered_unit_vectors(20000, spec)
    rows = sample_rows(20000, 2000, 0)
    xy = umap_layout(vectors[rows], knn=knn_graph(vectors[rows], 16), seed=0)
    sample = sample_rows(20000, 2000, 1)
    own = np.isin(sample, rows)
    scores = {}
    for epochs in (0, PLACE_EPOCHS):
        index = LandmarkIndex(vectors[rows], xy, k=15, epochs=epochs, placement="attract")
        placed, _, _ = index.place(vectors[sample])
        placed[own] = xy[np.searchsorted(rows, sample[own])]
        scores[epochs] = neighbourhood_preservation(vectors[sample], placed, queries=2000)
    assert scores[PLACE_EPOCHS] > 1.05 * scores[0], scores  # measured: 0.304 vs 0.268


def test_refined_placement_is_per_row_and_reproducible():
    vectors, _ = clustered(1200)
    xy = PcaProjection.fit(vectors[:300])(vectors[:300])
    index = LandmarkIndex(vectors[:300], xy, k=15, placement="attract")
    whole, _, _ = index.place(vectors[300:])
    halves = np.concatenate([index.place(vectors[300:700])[0], index.place(vectors[700:])[0]])
    np.testing.assert_allclose(whole, halves, rtol=1e-5, atol=1e-5)  # a row's place depends on it alone
    plain, _, _ = LandmarkIndex(vectors[:300], xy, k=15, epochs=0, placement="attract").place(vectors[300:])
    assert not np.allclose(whole, plain)  # the refinement moved rows
    np.testing.assert_array_equal(whole, index.place(vectors[300:])[0])


def test_cell_placement_keeps_a_row_beside_its_nearest_landmark_and_is_per_row():
    vectors, _ = clustered(1200)
    xy = PcaProjection.fit(vectors[:300])(vectors[:300])
    index = LandmarkIndex(vectors[:300], xy, k=15)  # cell: the default
    placed, neighbours, _ = index.place(vectors[300:])
    nearest = xy[neighbours[:, 0]]
    reach = np.linalg.norm(xy[neighbours[:, :CELL_NEIGHBOURS]] - nearest[:, None], axis=2).max(axis=1)
    step = np.linalg.norm(placed - nearest, axis=1)
    assert np.all(step <= CELL_SPREAD * reach + 1e-5)  # a step toward its neighbours, never past them
    assert np.mean(step > 0) > 0.9  # rows sharing a landmark are not stacked on it
    halves = np.concatenate([index.place(vectors[300:700])[0], index.place(vectors[700:])[0]])
    np.testing.assert_allclose(placed, halves, rtol=1e-5, atol=1e-5)


def test_cell_placement_keeps_more_nearest_neighbours_than_attraction():
    """Every row's 10 nearest among all rows (the finest scale the map is read at): cell placement keeps more
    of them than the weighted average with UMAP's attraction, which draws rows together onto their landmarks."""
    spec = ClusteredSpec(dim=64, clusters=400, groups=20, seed=3)
    vectors = clustered_unit_vectors(20000, spec)
    rows = sample_rows(20000, 2000, 0)
    xy = umap_layout(vectors[rows], knn=knn_graph(vectors[rows], 16), seed=0)
    scores = {}
    for placement in ("cell", "attract"):
        placed, _, _ = LandmarkIndex(vectors[rows], xy, k=15, placement=placement).place(vectors)
        placed[rows] = xy
        scores[placement] = neighbourhood_preservation(vectors, placed, queries=2000)
    assert scores["cell"] > 1.5 * scores["attract"], scores


def test_preservation_among_all_rows_streamed_equals_the_in_memory_figure():
    vectors, _ = clustered(1500)
    xy = PcaProjection.fit(vectors)(vectors)
    expected = neighbourhood_preservation(vectors, xy, queries=200, seed=4)
    picked = pick_queries(1500, 200, 4)
    broken = np.full((1, vectors.shape[1]), np.nan, np.float32)  # a NaN row: never anyone's neighbour
    batches = [(np.arange(s, min(s + 400, 1500)), vectors[s : s + 400]) for s in range(0, 1500, 400)]
    batches.append((np.array([1500]), broken))
    got = preservation_among_all(picked, vectors[picked], iter(batches), np.arange(1500), xy)
    assert 0 < got < 1 and abs(got - expected) < 1e-9
