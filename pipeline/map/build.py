"""`latent map` from start to end (``run_map``): the landmark stage on the driver (pipeline/map/landmarks.py),
placement of every row as a job of the shared runner (pipeline/map/place.py: a killed run resumes, each row
placed once), then the regions' table (store.py), quality (quality.py), map.png (render.py) and map.json,
published atomically; append and the staging directory's resume live here too.
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

from pipeline.config import MapCommandConfig, MapMode
from pipeline.errors import LatentError
from pipeline.io.publish import hold_target, pid_alive, publish_directory, refuse_output_inside_inputs
from pipeline.io.shards import ERRORS_DIR, STATE_DIR, SUCCESS_MARKER, list_shards
from pipeline.map.landmarks import stage_layout
from pipeline.map.place import place_job, points_output
from pipeline.map.quality import measure_quality
from pipeline.map.source import MapSource, Unit, open_dataset, open_index
from pipeline.map.store import (
    CLUSTERS_FILE,
    IMAGE_FILE,
    INFO_FILE,
    LABELS_FILE,
    LANDMARKS_FILE,
    PAGE_FILE,
    POINTS_DIR,
    STAGING_MARK,
    Landmarks,
    MapDirectory,
    MapInfo,
    default_map_path,
    is_map_directory,
    level_column,
    read_points,
    region_table,
)
from pipeline.runner.output import JobOutput

log = logging.getLogger(__name__)
MAX_LEVELS = 6


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
    if m.levels > MAX_LEVELS:  # a cap on the levels the data may get (regions.choose_levels)
        raise LatentError(f"map.levels={m.levels}: at most {MAX_LEVELS}")
    for key, value in (("batch_size", cfg.batch_size), ("output.rows_per_shard", cfg.output.rows_per_shard)):
        if value < 1:
            raise LatentError(f"{key}={value}: must be at least 1")
    if m.top_regions is not None and m.top_regions < 1:
        raise LatentError(f"map.top_regions={m.top_regions}: must be at least 1 (or null: chosen from the data)")
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
        if not entry.name.endswith(key) and not pid_alive(pid):
            shutil.rmtree(entry, ignore_errors=True)
    staging = target.parent / f".{target.name}{STAGING_MARK}{key}"
    (staging / POINTS_DIR).mkdir(parents=True, exist_ok=True)
    return staging


def _old_map(target: Path, cfg: MapCommandConfig, source: MapSource) -> MapDirectory | None:
    if target.exists() and not target.is_dir():
        raise LatentError(f"output.path={target} is a file: give a folder for the map (a new path)")
    exists = is_map_directory(target)
    if cfg.map.mode == MapMode.create and exists:
        raise LatentError(f"output.path={target} already holds a map: use map.mode=overwrite, or append")
    if cfg.map.mode == MapMode.append and not exists:
        raise LatentError(f"map.mode=append: no map at {target} to append to (make one first)")
    if target.exists() and not exists and any(target.iterdir()):
        raise LatentError(f"output.path={target} exists and is not a map directory: choose another path")
    if cfg.map.mode != MapMode.append:
        return None
    found = MapDirectory(target)
    recorded, given = found.info.source, source.fingerprint()
    if recorded.get("kind") != given["kind"] or Path(recorded.get("path", "")).resolve() != Path(source.path).resolve():
        raise LatentError(
            f"map.mode=append: the map at {target} is of the {recorded.get('kind')} {recorded.get('path')}, not of "
            f"{source.path}: append rows of its own source, or map this one elsewhere (another output.path)"
        )
    if found.info.format_version < 2:
        raise LatentError(
            f"map.mode=append: the map at {target} is in format version {found.info.format_version} (one points "
            f"file per unit), which append no longer extends: rebuild it with map.mode=overwrite"
        )
    return found


def _append_units(old: MapDirectory, source: MapSource) -> tuple[list[Unit], list[Unit]]:
    """(kept units, new units) of an append: every old unit must still be in the source, unchanged. Their
    ``start`` is their first row on the map: new units are numbered after the mapped rows (a dataset's
    new shards may sort anywhere among its old ones)."""
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
        kept.append(Unit(unit.name, recorded["start"], unit.rows, unit.shard))
    names = {u.name for u in kept}
    new, first = [], sum(u.rows for u in kept)
    for unit in source.units:
        if unit.name not in names:
            new.append(Unit(unit.name, first, unit.rows, unit.shard))
            first += unit.rows
    return kept, new


def _place(
    cfg: MapCommandConfig,
    source: MapSource,
    units: list[Unit],
    output: JobOutput,
    levels: int,
    old: MapDirectory | None,
) -> dict:
    """Place ``units`` (their ``start``: their first row on the map) on the runner: a killed run's placed
    rows are kept, each row placed once. An append places as the map was placed (``old``'s ``place``)."""
    from pipeline.runner import run_job
    from pipeline.runtime import init_ray

    if output.complete:  # placed by a run killed after placement: nothing to place again
        return output.recorded_summary()
    if units:
        init_ray(cfg.ray)
    source_units = {u.name: u for u in source.units}
    in_source = [source_units.get(u.name, u) for u in units]  # where each unit's rows are read
    placement = old.info.placement if old is not None else cfg.map.place.value
    rows = [u.start for u in units]
    mapped = None if old is None else pc.unique(old.points(["id"]).column("id").combine_chunks())
    job = place_job(cfg, source, in_source, Path(output.path), levels, old is None, output, rows, placement, mapped)
    errors = Path(output.errors_dir)
    return run_job(job, finish=lambda result: {"rows": result.rows, "errors": _count_rows(errors)})


def _count_rows(directory: Path) -> int:
    """Rows of the committed shards in ``directory`` (all runs': a resumed run counts the killed one's)."""
    return sum(pq.ParquetFile(path).metadata.num_rows for path in list_shards(str(directory)))


def _copy_old(old: MapDirectory, staging: Path) -> None:
    """An appended map keeps the old map's points and error shards (same names: copying again is harmless)
    and run records."""
    for folder in (POINTS_DIR, ERRORS_DIR):
        for path in list_shards(str(old.path / folder)):
            (staging / folder).mkdir(exist_ok=True)
            shutil.copy2(path, staging / folder / Path(path).name)
    runs = old.path / STATE_DIR / "runs"
    if runs.is_dir():
        shutil.copytree(runs, staging / STATE_DIR / "runs", dirs_exist_ok=True)


def _old_layout(old: MapDirectory, staging: Path) -> tuple[Landmarks, list[list[str]], str, int]:
    shutil.copy2(old.path / LANDMARKS_FILE, staging / LANDMARKS_FILE)
    table = old.clusters()
    names = [table.filter(pc.equal(table["level"], lv))["label"].to_pylist() for lv in range(old.info.levels)]
    return Landmarks.load(staging / LANDMARKS_FILE), names, old.info.labels, old.info.landmarks


def _render(cfg: MapCommandConfig, source: MapSource, staging: Path, points: pa.Table, clusters: pa.Table) -> None:
    from pipeline.map.render import LabelLevel, render_map

    levels = []
    for level, fontsize in ((0, 15), (1, 8.5)):  # the top level's labels large, the next level's smaller
        table = clusters.filter(pc.equal(clusters["level"], level))
        if table.num_rows:
            x, y = (table[c].to_numpy(zero_copy_only=False) for c in ("x", "y"))
            weight = "bold" if level == 0 else "normal"
            levels.append(
                LabelLevel(np.stack([x, y], 1), table["label"].to_pylist(), table["size"].to_pylist(), fontsize, weight)
            )
    from pipeline.map.map_html import write_map_html

    count = len(clusters.filter(pc.equal(clusters["level"], 0)))
    levels_here = [
        points.column(level_column(level)).to_numpy() for level in range(len(set(clusters["level"].to_pylist())))
    ]
    write_map_html(
        staging / PAGE_FILE,
        np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], axis=1),
        levels_here,
        points.column("id"),
        clusters.to_pylist(),
        title=f"{Path(source.path).name}: {count} regions",
        seed=cfg.map.seed,
    )
    render_map(
        staging / IMAGE_FILE,
        np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], axis=1),
        points.column(level_column(0)).to_numpy().astype(np.int32),
        levels,
        title=f"{Path(source.path).name}",
        seed=cfg.map.seed,
    )


def run_map(cfg: MapCommandConfig) -> dict[str, Any]:
    """Build (or append to) the map directory of cfg's source; returns the summary (also in map.json)."""
    _check(cfg)
    target = _target(cfg)
    refuse_output_inside_inputs(
        {"output.path": str(target)}, {"input.path": cfg.input.path, "index.path": cfg.index.path}
    )
    with hold_target(target, "output.path"):  # held up to the publish: a second run on this output is refused
        return _run_map(cfg, target)


def _run_map(cfg: MapCommandConfig, target: Path) -> dict[str, Any]:
    total_started = time.perf_counter()
    source = open_source(cfg)
    old = _old_map(target, cfg, source)
    if old is not None and old.info.source.get("dim") != source.dim:
        raise LatentError(
            f"map.mode=append: the map holds {old.info.source.get('dim')}-d rows, the source {source.dim}-d"
        )
    staging = _staging(target, _run_key(source, cfg))
    output = points_output(staging)
    output.prepare()
    try:
        summary = _stage_and_publish(cfg, source, target, old, staging, output, total_started)
    except Exception:
        if not list_shards(str(staging / POINTS_DIR)):  # nothing placed to resume from: leave no staging folder
            shutil.rmtree(staging, ignore_errors=True)
        raise
    return summary


def _stage_and_publish(
    cfg: MapCommandConfig,
    source: MapSource,
    target: Path,
    old: MapDirectory | None,
    staging: Path,
    output: JobOutput,
    total_started: float,
) -> dict[str, Any]:
    with output.lock():  # a second `latent map` of the same source and parameters is refused
        (staging / "owner.pid").write_text(str(os.getpid()))
        timings: dict[str, Any] = {}
        if old is not None:
            kept, units = _append_units(old, source)
            landmarks, names, method, n_landmarks = _old_layout(old, staging)
        else:
            kept, units = [], source.units
            landmarks, names, method, n_landmarks = stage_layout(cfg, source, staging, timings)
        levels = len(landmarks.parents)
        started = time.perf_counter()
        _place(cfg, source, units, output, levels, old)
        timings["place_s"] = time.perf_counter() - started
        if old is not None:
            _copy_old(old, staging)
        points = read_points(staging / POINTS_DIR, levels, ["row", "id", "x", "y", *map(level_column, range(levels))])
        if not points.num_rows:
            raise LatentError(f"no row of {source.path} could be placed: see {staging / ERRORS_DIR}")
        errors = _count_rows(staging / ERRORS_DIR)
        info = _finish(cfg, source, staging, old, points, landmarks, names, method, n_landmarks, kept + units, timings)
        timings["total_s"] = time.perf_counter() - total_started
        info.timings = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in timings.items()}
        for leftover in [staging / LABELS_FILE, staging / "owner.pid", staging / SUCCESS_MARKER]:
            leftover.unlink(missing_ok=True)
        shutil.rmtree(staging / POINTS_DIR / ".tmp", ignore_errors=True)
        (staging / INFO_FILE).write_text(info.to_json())
        publish_directory(staging, target, create="output.path" if cfg.map.mode == MapMode.create else None)
    quality = info.quality
    summary = {
        "map": str(target),
        "rows": info.rows,
        "errors": errors,
        "clusters": info.clusters,
        "labels": method,
        "quality": quality,
        "timings": info.timings,
    }
    print(
        f"latent map: {_count(info.rows, 'row')} -> {target} ({' / '.join(map(str, info.clusters))} regions, "
        f"labels: {method}); preservation {_figure(quality.get('preservation'))}"
        f" (umap-learn: {_figure(quality.get('reference_preservation'))}); {timings['total_s']:.1f} s"
        + (f"; {_count(errors, 'row')} not placed (see {target / ERRORS_DIR})" if errors else "")
    )
    return summary


def _finish(
    cfg: MapCommandConfig,
    source: MapSource,
    staging: Path,
    old: MapDirectory | None,
    points: pa.Table,
    landmarks: Landmarks,
    names: list[list[str]],
    method: str,
    n_landmarks: int,
    units: list[Unit],
    timings: dict,
) -> MapInfo:
    """The regions' table, quality and map.png written into ``staging``; map.json's contents returned."""
    from pipeline.runtime import code_version

    clusters = region_table(points, names, landmarks.parents)
    pq.write_table(clusters, staging / CLUSTERS_FILE)
    x, y = points.column("x").to_numpy(), points.column("y").to_numpy()
    bounds = [float(x.min()), float(y.min()), float(x.max()), float(y.max())]
    if old is not None:
        quality = {**old.info.quality, "note": "measured when the map was built, before appends"}
    else:
        quality = measure_quality(cfg, source, points, timings)
    if cfg.image:
        started = time.perf_counter()
        _render(cfg, source, staging, points, clusters)
        timings["image_s"] = time.perf_counter() - started
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    history = [*(old.info.history if old else []), {"mode": cfg.map.mode.value, "at": now, "rows": source.rows}]
    return MapInfo(
        source=source.fingerprint(),
        method=old.info.method if old else cfg.map.method.value,
        params=old.info.params if old else {k: _plain(v) for k, v in asdict(cfg.map).items()},
        rows=points.num_rows,
        levels=len(landmarks.parents),
        clusters=[len(p) for p in landmarks.parents],
        landmarks=n_landmarks,
        seeds={"landmarks": cfg.map.seed, "umap": cfg.map.seed, "kmeans": cfg.map.seed, "quality": cfg.map.seed + 1},
        metric=source.metric,
        labels=method,
        quality=quality,
        timings={},
        units=[{"name": u.name, "start": u.start, "rows": u.rows} for u in units],
        bounds=bounds,
        model=source.model,
        created_at=old.info.created_at if old else now,
        created_by=code_version(),
        history=history,
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _figure(value: float | None) -> str:
    """A measured figure, or why there is none (too few rows to compare k neighbours, or not measured)."""
    return f"{value:.3f}" if isinstance(value, (int, float)) and np.isfinite(value) else "not measured"


def _plain(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value
