"""The landmark stage of `latent map`, on the driver, before any row is placed: a seeded landmark sample
laid out in 2-D (layout.py: UMAP over FAISS's kNN graph, or PCA; arrange.py: the graph's pieces put
where their centroids say), its regions at every level (regions.py) and their names (labels.py).
Staged in the map's staging directory (``stage_layout``), so that a killed `latent map` rerun resumes
after it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.config import MapCommandConfig, MapMethod
from pipeline.errors import LatentError
from pipeline.io.vectors import usable
from pipeline.map.arrange import arrange_pieces
from pipeline.map.labels import label_method, make_labels
from pipeline.map.layout import PcaProjection, cuml_available, knn_graph, sample_rows, umap_layout
from pipeline.map.regions import find_regions
from pipeline.map.source import MapSource
from pipeline.map.store import LABELS_FILE, LANDMARKS_FILE, Landmarks


def make_layout(cfg: MapCommandConfig, source: MapSource, timings: dict) -> tuple[Landmarks, list, str, int]:
    """Landmarks (sample, 2-D layout, regions) and their labels: (landmarks, labels, label method, seed)."""
    m = cfg.map
    size = source.rows if m.method == MapMethod.umap else m.landmarks
    if m.method == MapMethod.umap and source.rows > m.max_full_umap:
        raise LatentError(
            f"map.method=umap lays out every row: {source.rows:,} is above map.max_full_umap={m.max_full_umap:,} "
            f"(use map.method=landmarks, linear in rows)"
        )
    started = time.perf_counter()
    rows = sample_rows(source.rows, size, m.seed)
    vectors, texts = source.take(rows)
    ok = usable(vectors, source.metric)  # NaN and (cosine) zero rows: left out here, recorded by placement
    if not ok.all():
        rows, vectors, texts = rows[ok], vectors[ok], [t for t, keep in zip(texts, ok) if keep]
    if len(rows) < 3:
        raise LatentError(f"{source.path}: fewer than 3 rows with a usable vector (NaN, infinite or zero vectors)")
    timings["sample_s"] = time.perf_counter() - started
    started = time.perf_counter()
    graph, distances = knn_graph(vectors, m.neighbors + 1, source.metric)
    timings["knn_graph_s"] = time.perf_counter() - started
    started = time.perf_counter()
    projection = None
    if m.method == MapMethod.pca:
        fitted = PcaProjection.fit(vectors)
        xy, projection = fitted(vectors), (fitted.mean, fitted.axes)
    else:
        device = "cuda" if (m.device.value != "cpu" and cuml_available()) else "cpu"
        if m.device.value == "cuda" and device != "cuda":
            raise LatentError("map.device=cuda: cuML's UMAP needs cuML and a GPU (use map.device=auto or cpu)")
        xy = umap_layout(
            vectors,
            n_neighbors=m.neighbors,
            min_dist=m.min_dist,
            metric=source.metric,
            seed=m.seed,
            device=device,
            knn=(graph, distances),
        )
        xy, pieces = arrange_pieces(xy, vectors, graph[:, : m.neighbors], m.seed)
        timings["layout_device"] = device  # type: ignore[assignment]
        timings["graph_pieces"] = pieces
    timings["layout_s"] = time.perf_counter() - started
    started = time.perf_counter()
    regions = find_regions(
        vectors,
        xy,
        graph,
        levels=m.levels,
        split=m.split,
        min_cluster_size=m.min_cluster_size,
        coarse=m.coarse.value,
        coarse_k=m.coarse_k,
        top_regions=m.top_regions,
        seed=m.seed,
    )
    timings["regions_s"] = time.perf_counter() - started
    started = time.perf_counter()
    method = label_method(cfg, source, texts)
    names = make_labels(cfg, source, method, vectors, texts, regions)
    timings["labels_s"] = time.perf_counter() - started
    landmarks = Landmarks(rows, vectors, xy, regions.landmark_labels, regions.parents, projection)
    return landmarks, names, method, len(rows)


def stage_layout(
    cfg: MapCommandConfig, source: MapSource, staging: Path, timings: dict
) -> tuple[Landmarks, list[list[str]], str, int]:
    """The layout staged in ``staging`` by a killed run, or a new one, staged: (landmarks, labels, label
    method, landmarks count); ``timings`` gets its stages' seconds."""
    if (staging / LANDMARKS_FILE).is_file() and (staging / LABELS_FILE).is_file():
        saved = json.loads((staging / LABELS_FILE).read_text())
        timings.update(saved["timings"])
        return Landmarks.load(staging / LANDMARKS_FILE), saved["names"], saved["method"], saved["landmarks"]
    landmarks, names, method, count = make_layout(cfg, source, timings)
    landmarks.save(staging / LANDMARKS_FILE)
    state = {"names": names, "method": method, "landmarks": count, "timings": timings}
    tmp = staging / f"{LABELS_FILE}.tmp"
    tmp.write_text(json.dumps(state))
    tmp.replace(staging / LABELS_FILE)  # written last, atomically: the layout is staged
    return landmarks, names, method, count
