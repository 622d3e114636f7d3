"""Placement of a source unit: its rows' 2-D positions and regions from the landmarks, written as one
points shard plus a completion record (the unit's region counts and coordinate sums).

``Placer`` is what every placement task needs, picklable (Ray puts it in the object store once);
``place_unit`` is the task body, callable without Ray.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.map.layout import PLACE_EPOCHS, LandmarkIndex, PcaProjection
from pipeline.map.regions import vote
from pipeline.map.source import MapSource, Unit
from pipeline.map.store import RECORDS_DIR, Landmarks, level_column, points_schema


@dataclass
class Placer:
    index: LandmarkIndex
    landmark_rows: np.ndarray  # global rows of the landmarks (they keep their own position and regions)
    labels: list[np.ndarray]  # per level, each landmark's region
    parents: list[np.ndarray]
    projection: PcaProjection | None = None  # method pca: positions by projection
    keep_landmarks: bool = True  # False when placing another source's rows (append)

    @classmethod
    def from_landmarks(
        cls,
        landmarks: Landmarks,
        metric: str,
        k: int,
        seed: int,
        keep: bool = True,
        *,
        epochs: int = PLACE_EPOCHS,
        min_dist: float = 0.1,
    ) -> Placer:
        """A placer from stored landmarks: ``k`` nearest landmarks per row, ``epochs`` of UMAP attraction to
        them after their weighted average (``min_dist``: the landmark layout's, for UMAP's curve)."""
        projection = PcaProjection(*landmarks.projection) if landmarks.projection is not None else None
        index = LandmarkIndex(
            landmarks.vectors, landmarks.xy, metric=metric, k=k, seed=seed, epochs=epochs, min_dist=min_dist
        )
        return cls(index, landmarks.rows, landmarks.labels, landmarks.parents, projection, keep)

    def place(self, first_row: int, vectors: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(xy, regions per level) of rows ``first_row ..`` holding ``vectors``."""
        xy, neighbours, weights = self.index.place(vectors)
        if self.projection is not None:
            xy = self.projection(vectors)
        finest = len(self.labels) - 1
        fine = vote(self.labels[finest], neighbours, weights, len(self.parents[finest]))
        if self.keep_landmarks and len(self.landmark_rows):
            rows = np.arange(first_row, first_row + len(vectors))
            at = np.searchsorted(self.landmark_rows, rows)
            at = np.minimum(at, len(self.landmark_rows) - 1)
            own = self.landmark_rows[at] == rows
            xy[own] = self.index.xy[at[own]]
            fine[own] = self.labels[finest][at[own]]
        levels = [fine]
        for level in range(finest, 0, -1):
            levels.insert(0, self.parents[level][levels[0]])
        return xy, levels


def unit_file(unit: Unit) -> str:
    return f"{unit.name}.parquet"


def place_unit(source: MapSource, unit: Unit, placer: Placer, points_dir: str) -> dict:
    """Place every row of ``unit``; write ``<points_dir>/<unit>.parquet`` and its completion record; return
    the record: rows, per level the regions' counts and x/y sums, and the unit's bounds."""
    import faiss

    faiss.omp_set_num_threads(1)  # one task per CPU: no oversubscription
    levels = len(placer.labels)
    schema = points_schema(levels)
    counts = [np.zeros(len(p), np.int64) for p in placer.parents]
    sums = [np.zeros((len(p), 2), np.float64) for p in placer.parents]
    lo, hi = np.full(2, np.inf), np.full(2, -np.inf)
    final = Path(points_dir) / unit_file(unit)
    tmp = final.with_suffix(f".tmp-{os.getpid()}")
    rows = 0
    with pq.ParquetWriter(tmp, schema) as writer:
        for first, vectors, items in source.read(unit, items=True):
            xy, regions = placer.place(first, vectors)
            columns = {"id": items.column("id"), "x": pa.array(xy[:, 0]), "y": pa.array(xy[:, 1])}
            for level, region in enumerate(regions):
                columns[level_column(level)] = pa.array(region, pa.int32())
                counts[level] += np.bincount(region, minlength=len(counts[level]))
                np.add.at(sums[level], region, xy)
            writer.write_table(pa.table(columns, schema=schema))
            if len(xy):
                lo, hi = np.minimum(lo, xy.min(axis=0)), np.maximum(hi, xy.max(axis=0))
            rows += len(xy)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    record = {
        "unit": unit.name,
        "rows": rows,
        "counts": [c.tolist() for c in counts],
        "sums": [s.tolist() for s in sums],
        "bounds": [*lo.tolist(), *hi.tolist()],
    }
    done = record_file(points_dir, unit)
    done.parent.mkdir(exist_ok=True)
    done.with_suffix(".tmp").write_text(json.dumps(record))
    os.replace(done.with_suffix(".tmp"), done)
    return record


def record_file(points_dir: str | Path, unit: Unit) -> Path:
    """``<map>/records/<unit>.json``, beside ``<map>/points/``."""
    return Path(points_dir).parent / RECORDS_DIR / f"{unit.name}.json"


def read_record(points_dir: str | Path, unit: Unit) -> dict | None:
    """The completion record of a placed unit (None: not placed, or its shard is missing)."""
    done = record_file(points_dir, unit)
    if not done.is_file() or not (Path(points_dir) / unit_file(unit)).is_file():
        return None
    record = json.loads(done.read_text())
    return record if record.get("rows") == unit.rows else None
