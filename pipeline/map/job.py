"""`latent map`: the map job. Layout of the landmarks on the driver, placement of every unit in parallel
Ray tasks (each unit's shard and completion record written as it finishes: a killed run resumes from
its staging directory), then regions' table, quality, map.png and map.json, published atomically.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import LabelMethod, MapCommandConfig, MapMethod, MapMode
from pipeline.errors import LatentError
from pipeline.index.store import _pid_alive, publish_directory
from pipeline.map import labels as labelling
from pipeline.map.layout import PcaProjection, cuml_available, knn_graph, sample_rows, umap_layout
from pipeline.map.place import Placer, place_unit, read_record, record_file, unit_file
from pipeline.map.quality import neighbourhood_preservation, reference_preservation
from pipeline.map.regions import find_regions
from pipeline.map.source import MapSource, Unit, open_dataset, open_index
from pipeline.map.store import (
    CLUSTERS_FILE,
    CLUSTERS_SCHEMA,
    IMAGE_FILE,
    INFO_FILE,
    LABELS_FILE,
    LANDMARKS_FILE,
    POINTS_DIR,
    STAGING_MARK,
    Landmarks,
    MapDirectory,
    MapInfo,
    default_map_path,
    is_map_directory,
    level_column,
)

log = logging.getLogger(__name__)


def _check(cfg: MapCommandConfig) -> None:
    given = [k for k, v in (("input.path", cfg.input.path), ("index.path", cfg.index.path)) if v]
    if len(given) != 1:
        raise LatentError(f"give exactly one of input.path=EMBEDDINGS or index.path=INDEX (got {given or 'none'})")
    if cfg.input.path and not cfg.output.path:
        raise LatentError("output.path=MAP: where to write the map (a directory)")
    m = cfg.map
    for key in ("landmarks", "neighbors", "place_k", "levels", "split", "coarse_k"):
        if getattr(m, key) < 1:
            raise LatentError(f"map.{key}={getattr(m, key)}: must be at least 1")
    if m.metric not in ("auto", "ip", "l2"):
        raise LatentError(f"map.metric={m.metric}: auto, ip or l2")
    if not 0 <= m.min_dist <= 1:
        raise LatentError(f"map.min_dist={m.min_dist}: must be in [0, 1]")


def open_source(cfg: MapCommandConfig) -> MapSource:
    if cfg.index.path:
        return open_index(cfg.index.path, cfg.map.metric)
    return open_dataset(cfg.input.path, cfg.input.column, cfg.map.metric)


def _target(cfg: MapCommandConfig) -> Path:
    return Path(cfg.output.path or default_map_path(cfg.index.path)).absolute()


def _run_key(source: MapSource, cfg: MapCommandConfig) -> str:
    """The same source and parameters -> the same staging directory (resume after a kill)."""
    params = {"source": source.fingerprint(), "map": asdict(cfg.map)}  # what the layout and placement depend on
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _staging(target: Path, key: str) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    for entry in target.parent.glob(f".{target.name}{STAGING_MARK}*"):  # other runs' leftovers, if dead
        owner = entry / "owner.pid"
        pid = int(owner.read_text()) if owner.is_file() and owner.read_text().strip().isdigit() else 0
        if not entry.name.endswith(key) and not _pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
    staging = target.parent / f".{target.name}{STAGING_MARK}{key}"
    (staging / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    return staging


# --- layout ----------------------------------------------------------------------------------------


def _label_method(cfg: MapCommandConfig, source: MapSource, texts: list[str | None]) -> str:
    chosen = cfg.map.labels
    with_text = sum(1 for t in texts if t and t.strip())
    if chosen == LabelMethod.auto:
        if with_text >= 0.5 * max(1, len(texts)):
            return "text"
        return "zero_shot" if _known_model(source) else "none"
    if chosen == LabelMethod.zero_shot and not _known_model(source):
        raise LatentError(
            "map.labels=zero_shot needs the source's open_clip model, but its vectors carry no model fingerprint "
            "of an open_clip model (e.g. .npy or synthetic inputs): use map.labels=text or none"
        )
    if chosen == LabelMethod.text and not with_text:
        raise LatentError("map.labels=text: the source's rows have no text (captions); use zero_shot or none")
    return chosen.value


def _known_model(source: MapSource) -> bool:
    import open_clip

    model = source.model or {}
    return bool(model.get("name")) and model["name"] in open_clip.list_models()


def _text_encoder(cfg: MapCommandConfig, source: MapSource):
    """The source's own model's text tower (checked against its fingerprint, as a Searcher's)."""
    from types import SimpleNamespace

    from pipeline.encode.encoder import ClipEncoder
    from pipeline.search.searcher import resolve_query_model

    spec = resolve_query_model(SimpleNamespace(embedding=source.embedding, dim=source.dim), cfg.model)
    return ClipEncoder(spec).encode_texts


def make_labels(
    cfg: MapCommandConfig, source: MapSource, method: str, vectors: np.ndarray, texts: list, regions
) -> list[list[str]]:
    """Labels per level (``region <n>`` where a method finds nothing)."""
    out = []
    encode = concepts = None
    if method == "zero_shot":
        concepts = labelling.read_vocabulary(cfg.map.vocabulary)
        encode = _text_encoder(cfg, source)
    for level, assigned in enumerate(regions.landmark_labels):
        n = len(regions.parents[level])
        if method == "text":
            names = labelling.text_labels(texts, assigned, n)
        elif method == "zero_shot":
            names = labelling.zero_shot_labels(labelling.centroids_of(vectors, assigned, n), concepts, encode)
        else:
            names = [""] * n
        out.append([name or f"region {level}.{i}" for i, name in enumerate(names)])
    return out


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
        timings["layout_device"] = device  # type: ignore[assignment]
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
        seed=m.seed,
    )
    timings["regions_s"] = time.perf_counter() - started
    started = time.perf_counter()
    method = _label_method(cfg, source, texts)
    names = make_labels(cfg, source, method, vectors, texts, regions)
    timings["labels_s"] = time.perf_counter() - started
    landmarks = Landmarks(rows, vectors, xy, regions.landmark_labels, regions.parents, projection)
    return landmarks, names, method, len(rows)


# --- placement ---------------------------------------------------------------------------------------


def place_all(cfg: MapCommandConfig, source: MapSource, units: list[Unit], placer: Placer, points: Path) -> dict:
    """Place the units not yet placed, in Ray tasks (``cfg.tasks`` in flight); records of all units."""
    import ray
    from tqdm import tqdm

    from pipeline.runtime import cluster_cpus, init_ray

    records = {u.name: r for u in units if (r := read_record(points, u)) is not None}
    pending = [u for u in units if u.name not in records]
    if records:
        log.warning("latent map: resuming, %d of %d units already placed", len(records), len(units))
    if not pending:
        return records
    if len(pending) == 1 and not cfg.ray.address and not ray.is_initialized():  # one unit: no cluster to start
        records[pending[0].name] = place_unit(source, pending[0], placer, str(points))
        return records
    init_ray(cfg.ray)
    remote = ray.remote(num_cpus=1, max_retries=2)(place_unit)
    placer_ref, source_ref = ray.put(placer), ray.put(source)
    in_flight_max = cfg.tasks or max(1, cluster_cpus())
    bar = tqdm(total=sum(u.rows for u in pending), unit="rows", desc="place", disable=not cfg.progress)
    waiting: dict[Any, Unit] = {}
    queue = list(pending)
    try:
        while queue or waiting:
            while queue and len(waiting) < in_flight_max:
                unit = queue.pop(0)
                waiting[remote.remote(source_ref, unit, placer_ref, str(points))] = unit
            done, _ = ray.wait(list(waiting), num_returns=1)
            for ref in done:
                unit = waiting.pop(ref)
                records[unit.name] = ray.get(ref)
                bar.update(unit.rows)
    finally:
        bar.close()
        for ref in waiting:
            ray.cancel(ref, force=True)
    return records


def region_table(records: list[dict], names: list[list[str]], parents: list[np.ndarray]) -> pa.Table:
    levels, cluster, parent, label, size, xs, ys = [], [], [], [], [], [], []
    for level in range(len(parents)):
        counts = np.sum([r["counts"][level] for r in records], axis=0)
        sums = np.sum([r["sums"][level] for r in records], axis=0)
        for i in range(len(parents[level])):
            n = int(counts[i])
            levels.append(level)
            cluster.append(i)
            parent.append(int(parents[level][i]))
            label.append(names[level][i])
            size.append(n)
            xs.append(sums[i][0] / n if n else np.nan)
            ys.append(sums[i][1] / n if n else np.nan)
    columns = [levels, cluster, parent, label, size, xs, ys]
    return pa.table(dict(zip(CLUSTERS_SCHEMA.names, columns)), schema=CLUSTERS_SCHEMA)


# --- the job -------------------------------------------------------------------------------------------


def _read_points(staging: Path, units: list[Unit], levels: int) -> tuple[np.ndarray, np.ndarray]:
    """(xy, coarse regions) of every point in the source's row order."""
    tables = [pq.read_table(staging / POINTS_DIR / unit_file(u), columns=["x", "y", level_column(0)]) for u in units]
    table = pa.concat_tables(tables)
    xy = np.stack([table.column("x").to_numpy(), table.column("y").to_numpy()], axis=1).astype(np.float32)
    return xy, table.column(level_column(0)).to_numpy().astype(np.int32)


def measure_quality(cfg: MapCommandConfig, source: MapSource, xy: np.ndarray, timings: dict) -> dict[str, Any]:
    q = cfg.quality
    if q.sample <= 0:
        return {}
    started = time.perf_counter()
    rows = sample_rows(source.rows, q.sample, cfg.map.seed + 1)
    vectors, _ = source.take(rows)
    ours = neighbourhood_preservation(
        vectors, xy[rows], k=q.k, queries=q.queries, metric=source.metric, seed=cfg.map.seed
    )
    out: dict[str, Any] = {"k": q.k, "sample": len(rows), "queries": min(q.queries, len(rows)), "preservation": ours}
    if q.reference and len(rows) > q.k + 1:
        ref, seconds = reference_preservation(
            vectors, k=q.k, queries=q.queries, metric=source.metric, seed=cfg.map.seed, n_neighbors=cfg.map.neighbors
        )
        out.update(reference_preservation=ref, reference_seconds=round(seconds, 2))
        out["relative"] = ours / ref if ref else None
    timings["quality_s"] = time.perf_counter() - started
    return out


def _old_map(target: Path, cfg: MapCommandConfig) -> MapDirectory | None:
    exists = is_map_directory(target)
    if cfg.map.mode == MapMode.create and exists:
        raise LatentError(f"output.path={target} already holds a map: use map.mode=overwrite, or append")
    if cfg.map.mode == MapMode.append and not exists:
        raise LatentError(f"map.mode=append: no map at {target} to append to (make one first)")
    if target.exists() and not exists and any(target.iterdir()):
        raise LatentError(f"output.path={target} exists and is not a map directory: choose another path")
    return MapDirectory(target) if cfg.map.mode == MapMode.append else None


def _append_units(old: MapDirectory, source: MapSource) -> tuple[list[Unit], list[Unit]]:
    """(kept units, new units) of an append: every old unit must still be in the source, unchanged."""
    if source.kind == "index":  # an index grows at its end: new label ranges after the mapped rows
        from pipeline.map.source import index_units

        kept = [Unit(r["name"], r["start"], r["rows"]) for r in old.info.units]
        mapped = sum(u.rows for u in kept)
        if mapped > source.rows:
            raise LatentError(
                f"map.mode=append: the map holds {mapped:,} items, the index only {source.rows:,} now (rebuilt?): "
                f"rebuild the map with map.mode=overwrite"
            )
        return kept, index_units(source.rows, mapped)
    current = {u.name: u for u in source.units}
    kept = []
    for recorded in old.info.units:
        unit = current.get(recorded["name"])
        if unit is None or unit.rows != recorded["rows"]:
            raise LatentError(
                f"map.mode=append: the source's unit {recorded['name']} ({recorded['rows']} rows) is gone or changed "
                f"since the map was built; only new rows can be appended: rebuild with map.mode=overwrite"
            )
        kept.append(unit)
    names = {u.name for u in kept}
    return kept, [u for u in source.units if u.name not in names]


def run_map(cfg: MapCommandConfig) -> dict[str, Any]:
    """Build (or append to) the map directory of cfg's source; returns the summary (also in map.json)."""
    from pipeline.runtime import code_version

    _check(cfg)
    total_started = time.perf_counter()
    source = open_source(cfg)
    target = _target(cfg)
    old = _old_map(target, cfg)
    if old is not None and old.info.source.get("dim") != source.dim:
        raise LatentError(
            f"map.mode=append: the map holds {old.info.source.get('dim')}-d rows, the source {source.dim}-d"
        )
    staging = _staging(target, _run_key(source, cfg))
    (staging / "owner.pid").write_text(str(os.getpid()))
    timings: dict[str, Any] = {}
    if old is not None:
        kept, new = _append_units(old, source)
        for unit in kept:
            shutil.copy2(old.path / POINTS_DIR / unit_file(unit), staging / POINTS_DIR / unit_file(unit))
            record = record_file(old.path / POINTS_DIR, unit)
            if record.is_file():
                record_file(staging / POINTS_DIR, unit).parent.mkdir(exist_ok=True)
                shutil.copy2(record, record_file(staging / POINTS_DIR, unit))
        shutil.copy2(old.path / LANDMARKS_FILE, staging / LANDMARKS_FILE)
        landmarks = Landmarks.load(staging / LANDMARKS_FILE)
        table = old.clusters()
        names = [table.filter(pc.equal(table["level"], lv))["label"].to_pylist() for lv in range(old.info.levels)]
        method, n_landmarks, keep = old.info.labels, old.info.landmarks, False
        units = kept + new
    else:
        if (staging / LANDMARKS_FILE).is_file() and (staging / LABELS_FILE).is_file():
            landmarks = Landmarks.load(staging / LANDMARKS_FILE)  # a killed run's layout: resume after it
            saved = json.loads((staging / LABELS_FILE).read_text())
            names, method, n_landmarks, timings = saved["names"], saved["method"], saved["landmarks"], saved["timings"]
        else:
            landmarks, names, method, n_landmarks = make_layout(cfg, source, timings)
            landmarks.save(staging / LANDMARKS_FILE)
            state = {"names": names, "method": method, "landmarks": n_landmarks, "timings": timings}
            (staging / LABELS_FILE).write_text(json.dumps(state))
        units, keep = source.units, True
    placer = Placer.from_landmarks(landmarks, source.metric, cfg.map.place_k, cfg.map.seed, keep=keep)
    started = time.perf_counter()
    records = place_all(cfg, source, units, placer, staging / POINTS_DIR)
    timings["place_s"] = time.perf_counter() - started
    ordered = [records[u.name] for u in units]
    clusters = region_table(ordered, names, landmarks.parents)
    pq.write_table(clusters, staging / CLUSTERS_FILE)
    xy, coarse = _read_points(staging, units, len(landmarks.parents))
    bounds = [float(xy[:, 0].min()), float(xy[:, 1].min()), float(xy[:, 0].max()), float(xy[:, 1].max())]
    if old is not None:
        quality = {**old.info.quality, "note": "measured when the map was built, before appends"}
    else:
        quality = measure_quality(cfg, source, xy, timings)
    if cfg.image:
        from pipeline.map.render import render_map

        started = time.perf_counter()
        top = clusters.filter(pc.equal(clusters["level"], 0))
        centres = np.stack([top["x"].to_numpy(zero_copy_only=False), top["y"].to_numpy(zero_copy_only=False)], 1)
        render_map(
            staging / IMAGE_FILE,
            xy,
            coarse,
            centres,
            top["label"].to_pylist(),
            top["size"].to_pylist(),
            title=f"{Path(source.path).name}: {source.rows:,} rows",
            seed=cfg.map.seed,
        )
        timings["image_s"] = time.perf_counter() - started
    timings["total_s"] = time.perf_counter() - total_started
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    history = [*(old.info.history if old else []), {"mode": cfg.map.mode.value, "at": now, "rows": source.rows}]
    info = MapInfo(
        source=source.fingerprint(),
        method=old.info.method if old else cfg.map.method.value,
        params=old.info.params if old else {k: _plain(v) for k, v in asdict(cfg.map).items()},
        rows=int(sum(r["rows"] for r in ordered)),
        levels=len(landmarks.parents),
        clusters=[len(p) for p in landmarks.parents],
        landmarks=n_landmarks,
        seeds={"landmarks": cfg.map.seed, "umap": cfg.map.seed, "kmeans": cfg.map.seed, "quality": cfg.map.seed + 1},
        metric=source.metric,
        labels=method,
        quality=quality,
        timings={k: (round(v, 3) if isinstance(v, float) else v) for k, v in timings.items()},
        units=[{"name": u.name, "start": u.start, "rows": u.rows, "file": unit_file(u)} for u in units],
        bounds=bounds,
        model=source.model,
        created_at=old.info.created_at if old else now,
        created_by=code_version(),
        history=history,
    )
    for leftover in [staging / LABELS_FILE, staging / "owner.pid"]:
        leftover.unlink(missing_ok=True)
    (staging / INFO_FILE).write_text(info.to_json())
    publish_directory(staging, target)
    summary = {
        "map": str(target),
        "rows": info.rows,
        "clusters": info.clusters,
        "labels": method,
        "quality": quality,
        "timings": info.timings,
    }
    print(
        f"latent map: {info.rows:,} rows -> {target} ({' / '.join(map(str, info.clusters))} regions, "
        f"labels: {method}); preservation {quality.get('preservation', float('nan')):.3f}"
        f" (umap-learn: {quality.get('reference_preservation', float('nan')):.3f}); {timings['total_s']:.1f} s"
    )
    return summary


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value
