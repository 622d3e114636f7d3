"""Placement of every row on the map, as a job of the shared runner (pipeline/runner/).

Read tasks stream a source unit's vectors (``read_unit``); placer actors (``PlaceBatches``), each
building its ``Placer`` once from the staged landmarks file, give every row its x, y and region at
each level; write tasks commit points shards (``write_points``). The runner owns the rest: resources,
progress, run record, and resume with each row placed exactly once (the key is the source ``row``).
``Placer`` is also what the server places query vectors with.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.io.shards import ERRORS_DIR, arrow_to_vectors, commit_table
from pipeline.io.vectors import vector_errors
from pipeline.map.layout import PLACE_EPOCHS, LandmarkIndex, PcaProjection
from pipeline.map.regions import vote
from pipeline.map.source import MapSource, Unit
from pipeline.map.store import LANDMARKS_FILE, POINTS_DIR, Landmarks, level_column, points_schema
from pipeline.runner.output import JobOutput

if TYPE_CHECKING:
    from pipeline.config import MapCommandConfig
    from pipeline.runner import Job

PLACE_ERRORS_SCHEMA = pa.schema(
    [pa.field("row", pa.int64()), pa.field("id", pa.string()), pa.field("error", pa.string())]
)
READER_MEMORY = 512 * 1024**2  # a read task: one batch of vectors and its items


@dataclass
class Placer:
    index: LandmarkIndex
    landmark_rows: np.ndarray  # global rows of the landmarks (they keep their own position and regions)
    labels: list[np.ndarray]  # per level, each landmark's region
    parents: list[np.ndarray]
    projection: PcaProjection | None = None  # method pca: positions by projection
    keep_landmarks: bool = True  # False when placing another source's rows (append, queries)

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
        placement: str = "cell",
    ) -> Placer:
        """A placer from stored landmarks: ``k`` nearest landmarks per row; ``placement`` cell, or attract:
        ``epochs`` of UMAP attraction to them after their weighted average (``min_dist``: the landmark layout's,
        for UMAP's curve)."""
        projection = PcaProjection(*landmarks.projection) if landmarks.projection is not None else None
        index = LandmarkIndex(
            landmarks.vectors, landmarks.xy, metric=metric, k=k, seed=seed, epochs=epochs, min_dist=min_dist,
            placement=placement,
        )  # fmt: skip
        return cls(index, landmarks.rows, landmarks.labels, landmarks.parents, projection, keep)

    def place(self, vectors: np.ndarray, rows: np.ndarray | None = None) -> tuple[np.ndarray, list[np.ndarray]]:
        """(xy, regions per level) of ``vectors``, the source's global ``rows`` (landmark rows keep theirs)."""
        xy, neighbours, weights = self.index.place(vectors)
        if self.projection is not None:
            xy = self.projection(vectors)
        finest = len(self.labels) - 1
        fine = vote(self.labels[finest], neighbours, weights, len(self.parents[finest]))
        if self.keep_landmarks and rows is not None and len(self.landmark_rows):
            at = np.searchsorted(self.landmark_rows, rows)
            at = np.minimum(at, len(self.landmark_rows) - 1)
            own = self.landmark_rows[at] == rows
            xy[own] = self.index.xy[at[own]]
            fine[own] = self.labels[finest][at[own]]
        levels = [fine]
        for level in range(finest, 0, -1):
            levels.insert(0, self.parents[level][levels[0]])
        return xy, levels


# -- the stages ---------------------------------------------------------------------------------------


ALREADY_MAPPED = "id already on the map (not placed twice)"


def read_unit(
    unit: dict, done: pa.Array | None, source: MapSource, mapped: pa.Array | None = None
) -> Iterator[pa.Table]:
    """Stage 1 (CPU task): a unit's rows as records ``row``, ``id``, ``vector``, ``error`` (``vector_errors``;
    an append: ids in ``mapped``, already on the map), without the rows in ``done`` (placed by an earlier run)."""
    skip = None if done is None else pc.cast(done, pa.int64())
    part = Unit(unit["name"], unit["start"], unit["rows"], unit["shard"])
    shift = unit["first_row"] - part.start  # the map's row numbers (append: after the mapped rows)
    for first, vectors, items in source.read(part, items=True):
        n, dim = vectors.shape
        records = pa.table(
            {
                "row": pa.array(np.arange(first + shift, first + shift + n, dtype=np.int64)),
                "id": items.column("id"),
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
                "error": pa.array(vector_errors(vectors, source.metric), pa.string()),
            }
        )
        if mapped is not None and len(mapped):
            again = pc.is_in(records.column("id"), value_set=mapped)
            error = pc.if_else(again, pa.scalar(ALREADY_MAPPED), records.column("error"))
            records = records.set_column(records.schema.get_field_index("error"), "error", error)
        if skip is not None:
            records = records.filter(pc.invert(pc.is_in(records.column("row"), value_set=skip)))
        yield records


class PlaceBatches:
    """Stage 2 (actor): records in, points out (x, y, region per level). Builds its Placer once."""

    def __init__(
        self,
        landmarks_path: str,
        metric: str,
        k: int,
        seed: int,
        keep: bool,
        threads: int | None,
        placement: str = "cell",
    ) -> None:
        if threads:
            import faiss

            faiss.omp_set_num_threads(threads)
        landmarks = Landmarks.load(Path(landmarks_path))
        self.placer = Placer.from_landmarks(landmarks, metric, k, seed, keep=keep, placement=placement)

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        ok = pc.is_null(batch.column("error")).to_numpy(zero_copy_only=False)
        rows = batch.column("row").to_numpy()
        xy = np.zeros((n, 2), np.float32)
        levels = [np.zeros(n, np.int32) for _ in self.placer.labels]
        if ok.any():
            vectors = arrow_to_vectors(batch.column("vector").filter(pa.array(ok)))
            placed, regions = self.placer.place(vectors, rows[ok])
            xy[ok] = placed
            for level, region in enumerate(regions):
                levels[level][ok] = region
        columns = {"row": batch.column("row"), "id": batch.column("id"), "x": xy[:, 0], "y": xy[:, 1]}
        columns.update({level_column(level): region for level, region in enumerate(levels)})
        return pa.table({**columns, "error": batch.column("error")})


def write_points(good: pa.Table, points_dir: str, levels: int) -> None:
    """Stage 3 (task): commit placed rows as a points shard (the runner records failed ones)."""
    schema = points_schema(levels)
    commit_table(good.select(schema.names).cast(schema), points_dir)


# -- the job ------------------------------------------------------------------------------------------


def points_output(staging: Path) -> JobOutput:
    """The placement job's output: the map's staging directory, points and errors keyed by source row."""
    return JobOutput(str(staging), data_dirs=(POINTS_DIR, ERRORS_DIR), key="row")


def place_job(
    cfg: MapCommandConfig,
    source: MapSource,
    units: list[Unit],
    staging: Path,
    levels: int,
    keep: bool,
    output: JobOutput | None = None,
    rows: list[int] | None = None,
    placement: str | None = None,
    mapped: pa.Array | None = None,
) -> Job:
    """The placement job of ``units`` of ``source`` into ``staging``, from the landmarks staged there.

    ``rows``: each unit's first row number on the map (default: its row in the source; an append
    numbers new units after the mapped rows; ``mapped``: the ids already on its map); ``output``: the staging
    directory's ``points_output``, when the caller holds its lock; ``placement``: default ``map.place`` (an
    append: the map's own)."""
    from pipeline.runner import ActorStage, Job, ReadStage, WriteStage, actor_resources

    res = cfg.resources
    row_bytes = source.dim * 4 + 64
    block = max(1 << 20, cfg.batch_size * row_bytes)
    placer = {
        "landmarks_path": str(staging / LANDMARKS_FILE),
        "metric": source.metric,
        "k": cfg.map.place_k,
        "placement": placement or cfg.map.place.value,
        "seed": cfg.map.seed,
        "keep": keep,
    }
    return Job(
        name="map",
        output=output or points_output(staging),
        config=cfg,
        units=[
            {"unit_id": u.name, "name": u.name, "start": u.start, "rows": u.rows, "shard": u.shard, "first_row": row}
            for u, row in zip(units, rows or [u.start for u in units])
        ],
        total_rows=sum(u.rows for u in units),
        # memory declared: Ray Data then keeps reading in its own tasks, not fused into the actor (ray#54433)
        read=ReadStage(
            partial(read_unit, source=source, mapped=mapped), cpus=res.cpus_per_reader, memory=READER_MEMORY
        ),
        process=ActorStage(
            PlaceBatches,
            placer,
            actor_resources(res.actors, res.cpus_per_actor, 0.0, "cpu"),
            batch_size=cfg.batch_size,
        ),
        write=WriteStage(
            partial(write_points, points_dir=str(staging / POINTS_DIR), levels=levels),
            rows=cfg.output.rows_per_shard,
            errors_schema=PLACE_ERRORS_SCHEMA,
        ),
        object_store_budget=max(256 * 1024**2, 8 * block),
        block_bytes=block,
        stall_timeout_s=cfg.ray.stall_timeout_s,
        commit_every_s=cfg.output.commit_every_s,
        progress=cfg.progress,
    )
