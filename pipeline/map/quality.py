"""How well a map keeps neighbours: of each sampled row's ``k`` nearest neighbours in latent space, the
share that are also among its ``k`` nearest on the map, within the sample (``neighbourhood_preservation``)
or among all rows (``preservation_among_all``); and the same figure for umap-learn's full fit of the sample
(the reference a landmark layout is measured against); and the global arrangement, ``regions_kept``: how
many of each region's nearest regions in latent space are its nearest on the map. ``measure_quality``
writes them all into map.json."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import pyarrow as pa

from pipeline.index.recall import GroundTruth, without_self
from pipeline.io.vectors import usable
from pipeline.map.arrange import nearest_points
from pipeline.map.layout import _flat_index, pca_layout, sample_rows, umap_layout

if TYPE_CHECKING:
    from pipeline.config import MapCommandConfig
    from pipeline.map.source import MapSource


def _neighbours(points: np.ndarray, queries: np.ndarray, k: int, metric: str) -> np.ndarray:
    index = _flat_index(points.shape[1], metric)
    index.add(np.ascontiguousarray(points, dtype=np.float32))
    _, found = index.search(np.ascontiguousarray(points[queries], dtype=np.float32), k + 1)
    return without_self(found, queries, k)  # each query itself dropped (wherever ties put it)


def pick_queries(n: int, queries: int, seed: int) -> np.ndarray:
    """The seeded, sorted positions (of ``n`` rows) whose neighbourhoods are compared."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(queries, n), replace=False))


def preservation_among_all(
    query_rows: np.ndarray,
    query_vectors: np.ndarray,
    batches: Iterable[tuple[np.ndarray, np.ndarray]],
    point_rows: np.ndarray,
    point_xy: np.ndarray,
    *,
    k: int = 10,
    metric: str = "ip",
) -> float:
    """Mean share of each query row's ``k`` nearest among all rows in latent space (``batches``: every row's
    (global rows, vectors), streamed: exact search, a running top ``k``) found among its ``k`` nearest among
    all the map's points (``point_rows``, ``point_xy``). Unusable vectors are left out, like their rows."""
    truth = GroundTruth(query_vectors, k, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    for rows, vectors in batches:
        ok = usable(vectors, metric)
        truth.add(vectors[ok], rows[ok])
    on_map = _flat_index(2, "l2")
    on_map.add(np.ascontiguousarray(point_xy, dtype=np.float32))
    at = np.searchsorted(point_rows, query_rows)
    _, near = on_map.search(np.ascontiguousarray(point_xy[at], dtype=np.float32), k + 1)
    latent = without_self(truth.labels(), query_rows, k)
    mapped = without_self(point_rows[near], query_rows, k)
    return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(latent, mapped)]) / k)


def neighbourhood_preservation(
    vectors: np.ndarray, xy: np.ndarray, *, k: int = 10, queries: int = 2000, metric: str = "ip", seed: int = 0
) -> float:
    """Mean share of each query row's ``k`` latent neighbours (among ``vectors``) found among its ``k``
    nearest on the map (``xy``, the same rows); queries: a seeded sample of the rows."""
    n = len(vectors)
    if n <= k + 1:
        return float("nan")
    picked = pick_queries(n, queries, seed)
    latent = _neighbours(vectors, picked, k, metric)
    on_map = _neighbours(np.asarray(xy, np.float32), picked, k, "l2")
    shared = [len(np.intersect1d(a, b, assume_unique=True)) for a, b in zip(latent, on_map)]
    return float(np.mean(shared) / k)


def reference_preservation(
    vectors: np.ndarray, *, k: int = 10, queries: int = 2000, metric: str = "ip", seed: int = 0, n_neighbors: int = 15
) -> tuple[float, float]:
    """(preservation, seconds) of umap-learn's full fit of ``vectors`` (graph by FAISS, as the map's)."""
    started = time.perf_counter()
    xy = umap_layout(vectors, n_neighbors=n_neighbors, metric=metric, seed=seed)
    seconds = time.perf_counter() - started
    return neighbourhood_preservation(vectors, xy, k=k, queries=queries, metric=metric, seed=seed), seconds


REGION_K = 3  # nearest regions compared (docs/map.md, map.json's quality)


def regions_kept(vectors: np.ndarray, xy: np.ndarray, regions: np.ndarray, k: int = REGION_K) -> float:
    """The global arrangement: for each region (``regions``: each row's), the share of its ``k`` nearest
    regions in latent space (by centroid of its rows) also among its ``k`` nearest on the map (by centroid)."""
    ids, inverse = np.unique(regions, return_inverse=True)
    if len(ids) <= k:
        return float("nan")
    counts = np.bincount(inverse)[:, None]

    def nearest(points: np.ndarray) -> np.ndarray:
        sums = np.zeros((len(ids), points.shape[1]))
        np.add.at(sums, inverse, points)
        return nearest_points(sums / counts, k)

    latent, mapped = nearest(np.asarray(vectors, np.float64)), nearest(np.asarray(xy, np.float64))
    return float(np.mean([len(np.intersect1d(a, b)) for a, b in zip(latent, mapped)]) / k)


def measure_quality(cfg: MapCommandConfig, source: MapSource, points: pa.Table, timings: dict) -> dict[str, Any]:
    """Neighbourhood preservation and regions' nearest regions kept, on a seeded sample (``points``: sorted by
    row), for the map, umap-learn's full fit of the sample and its PCA."""
    q = cfg.quality
    if q.sample <= 0:
        return {}
    started = time.perf_counter()
    point_rows = points.column("row").to_numpy()
    rows = sample_rows(source.rows, q.sample, cfg.map.seed + 1)
    rows = rows[np.isin(rows, point_rows)]  # rows recorded in _errors (NaN, zero vectors) are not on the map
    vectors, _ = source.take(rows)
    every = np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], axis=1)
    at = np.searchsorted(point_rows, rows)
    xy = every[at]
    levels = [points.column(name).to_numpy()[at] for name in points.column_names if name.startswith("cluster_")]

    def kept(layout: np.ndarray) -> list[float | None]:  # per level, coarse -> fine (None: too few regions)
        shares = (regions_kept(vectors, layout, level) for level in levels)
        return [None if np.isnan(share) else share for share in shares]

    ours = neighbourhood_preservation(vectors, xy, k=q.k, queries=q.queries, metric=source.metric, seed=cfg.map.seed)
    out: dict[str, Any] = {"k": q.k, "sample": len(rows), "queries": min(q.queries, len(rows)), "preservation": ours}
    out["regions_k"] = REGION_K
    out["regions_kept"] = kept(xy)
    out["pca_regions_kept"] = kept(pca_layout(vectors))
    if q.all_rows and source.rows > q.k + 1:  # the same queries' nearest among every row: one more pass
        picked = pick_queries(len(rows), q.queries, cfg.map.seed)
        batches = (
            (np.arange(first, first + len(batch)), batch)
            for unit in source.units
            for first, batch, _ in source.read(unit, items=False)
        )
        out["preservation_all_rows"] = preservation_among_all(
            rows[picked], vectors[picked], batches, point_rows, every, k=q.k, metric=source.metric
        )
    if q.reference and len(rows) > q.k + 1:
        ref_started = time.perf_counter()
        ref_xy = umap_layout(vectors, n_neighbors=cfg.map.neighbors, metric=source.metric, seed=cfg.map.seed)
        seconds = time.perf_counter() - ref_started
        ref = neighbourhood_preservation(
            vectors, ref_xy, k=q.k, queries=q.queries, metric=source.metric, seed=cfg.map.seed
        )
        # what ``relative`` compares against: a fit of the sample alone, not a layout of every row measured on
        # the sample (that comparison, umap-learn's fit of all rows: docs/benchmarks.md, "fair comparison")
        out.update(reference="umap-learn's fit of the quality sample alone", reference_seconds=round(seconds, 2))
        out["reference_preservation"] = ref
        out["relative"] = ours / ref if ref else None
        out["reference_regions_kept"] = kept(ref_xy)
    timings["quality_s"] = time.perf_counter() - started
    return out
