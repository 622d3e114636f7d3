"""The map directory (docs/map.md): point shards, the regions table, map.json, map.png, the landmarks.

The points shards are the placement job's (pipeline/map/place.py), committed by the job runner in any
order; ``read_points`` gives them back in the source's row order (their ``row`` column).

Written into a staging directory next to the target and published in one step (the index directory's
atomic swap, pipeline.io.publish.publish_directory); a killed run leaves its staging directory, and
the next run with the same source and parameters resumes from it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LatentError, check_format_version

FORMAT_VERSION = 2  # 2: points shards written by the job runner, each point with its source `row`
INFO_FILE = "map.json"
POINTS_DIR = "points"
CLUSTERS_FILE = "clusters.parquet"
IMAGE_FILE = "map.png"
PAGE_FILE = "map.html"  # the map as one offline page (pipeline/map/map_html.py)
LANDMARKS_FILE = "landmarks.npz"  # landmark vectors (float16), positions, regions: what append places from
LABELS_FILE = "labels.json"  # staging only: the layout stage's labels
STAGING_MARK = ".tmp-map-"


def level_column(level: int) -> str:
    return f"cluster_{level}"


def points_schema(levels: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("row", pa.int64(), nullable=False),  # the source's row (an index's label): the points' order
            pa.field("id", pa.string(), nullable=False),
            pa.field("x", pa.float32(), nullable=False),
            pa.field("y", pa.float32(), nullable=False),
            *(pa.field(level_column(level), pa.int32(), nullable=False) for level in range(levels)),
        ]
    )


CLUSTERS_SCHEMA = pa.schema(
    [
        pa.field("level", pa.int32(), nullable=False),
        pa.field("cluster", pa.int32(), nullable=False),
        pa.field("parent", pa.int32(), nullable=False),  # the region at level - 1 holding it (-1 at level 0)
        pa.field("label", pa.string(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("x", pa.float32(), nullable=False),  # centroid of its points on the map
        pa.field("y", pa.float32(), nullable=False),
    ]
)


@dataclass
class MapInfo:
    """map.json."""

    source: dict[str, Any]  # kind (dataset | index), path, rows, dim, sha256 (the source's fingerprint)
    method: str  # landmarks | umap | pca
    params: dict[str, Any]  # layout, region and label parameters as run
    rows: int
    levels: int
    clusters: list[int]  # regions per level
    landmarks: int  # sample size of the layout
    seeds: dict[str, int]
    metric: str
    labels: str  # text | zero-shot | none
    quality: dict[str, Any]  # neighbourhood preservation (ours and the reference's), ARI when known
    timings: dict[str, float]  # seconds per stage
    units: list[dict[str, Any]]  # name, start, rows of each source unit placed (what append checks)
    bounds: list[float]  # xmin, ymin, xmax, ymax
    model: dict[str, Any] | None = None  # the source's model fingerprint (zero-shot labels, query placement)
    created_at: str = ""
    created_by: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        """Strict JSON: a figure that could not be measured (NaN, e.g. too few rows) is null."""
        return json.dumps(_finite(asdict(self)), indent=2, sort_keys=True, allow_nan=False)

    @property
    def placement(self) -> str:
        """How rows were placed (``map.place``; maps made before the key: attract), as appends must."""
        return str(self.params.get("place", "attract"))

    @classmethod
    def from_json(cls, text: str | bytes) -> MapInfo:
        data = json.loads(text)
        check_format_version(data, FORMAT_VERSION, "map")
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def default_map_path(index_path: str | Path) -> Path:
    """Where the map of an index lives by default: beside it, ``<index>.map``."""
    index = Path(index_path)
    return index.parent / f"{index.name}.map"


def is_map_directory(path: str | Path) -> bool:
    return (Path(path) / INFO_FILE).is_file()


def read_points(directory: str | Path, levels: int, columns: list[str] | None = None) -> pa.Table:
    """The committed points shards of ``directory``, sorted by source row (``columns``: only these)."""
    from pipeline.io.shards import list_shards

    wanted = None if columns is None else list(dict.fromkeys(["row", *columns]))
    tables = [pq.read_table(path, columns=wanted) for path in list_shards(str(directory))]
    schema = points_schema(levels)
    table = pa.concat_tables(tables) if tables else schema.empty_table().select(wanted or schema.names)
    table = table.sort_by("row")
    return table if columns is None or "row" in columns else table.drop_columns(["row"])


@dataclass
class Landmarks:
    rows: np.ndarray  # global rows of the source at build time
    vectors: np.ndarray  # float32
    xy: np.ndarray
    labels: list[np.ndarray]  # per level
    parents: list[np.ndarray]  # per level
    projection: tuple[np.ndarray, np.ndarray] | None = None  # pca: (mean, axes)

    def save(self, path: Path) -> None:
        arrays = {"rows": self.rows, "vectors": self.vectors.astype(np.float16), "xy": self.xy}
        for level, (lab, par) in enumerate(zip(self.labels, self.parents)):
            arrays[f"labels_{level}"], arrays[f"parents_{level}"] = lab, par
        if self.projection is not None:
            arrays["pca_mean"], arrays["pca_axes"] = self.projection
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, **arrays)
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path) -> Landmarks:
        with np.load(path) as data:
            levels = sum(1 for key in data.files if key.startswith("labels_"))
            projection = (data["pca_mean"], data["pca_axes"]) if "pca_mean" in data.files else None
            return cls(
                data["rows"],
                data["vectors"].astype(np.float32),
                data["xy"],
                [data[f"labels_{i}"] for i in range(levels)],
                [data[f"parents_{i}"] for i in range(levels)],
                projection,
            )


class MapDirectory:
    """A published map directory, opened read-only."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not is_map_directory(self.path):
            raise LatentError(f"{self.path} is not a map directory (no {INFO_FILE}); make one with `latent map`")
        self.info = MapInfo.from_json((self.path / INFO_FILE).read_bytes())

    def points(self, columns: list[str] | None = None) -> pa.Table:
        """Every point, in the source's row order."""
        if self.info.format_version < 2:  # version 1: one file per source unit, in map.json's units' order
            files = [self.path / POINTS_DIR / u["file"] for u in self.info.units]
            tables = [pq.read_table(f, columns=columns) for f in files]
            empty = points_schema(self.info.levels).empty_table().drop_columns(["row"])
            return pa.concat_tables(tables) if tables else empty.select(columns or empty.schema.names)
        return read_points(self.path / POINTS_DIR, self.info.levels, columns)

    def clusters(self) -> pa.Table:
        return pq.read_table(self.path / CLUSTERS_FILE)

    def landmarks(self) -> Landmarks:
        return Landmarks.load(self.path / LANDMARKS_FILE)

    def check_fresh(self, fingerprint: dict[str, Any], what: str) -> None:
        """LatentError when the map's source changed since it was built (offering append)."""
        recorded = self.info.source
        if recorded.get("sha256") != fingerprint.get("sha256") or recorded.get("rows") != fingerprint.get("rows"):
            raise LatentError(
                f"the map at {self.path} is stale: {what} changed since it was built ({recorded.get('rows')} rows "
                f"then, {fingerprint.get('rows')} now); update it with `latent map ... map.mode=append` (places "
                f"new rows, moves none) or rebuild it with map.mode=overwrite"
            )


def region_table(points: pa.Table, names: list[list[str]], parents: list[np.ndarray]) -> pa.Table:
    """The regions' table (docs/map.md) from every committed point: sizes and centroids per level."""
    x = points.column("x").to_numpy().astype(np.float64)
    y = points.column("y").to_numpy().astype(np.float64)
    levels, cluster, parent, label, size, xs, ys = [], [], [], [], [], [], []
    for level, above in enumerate(parents):
        n = len(above)
        region = points.column(level_column(level)).to_numpy()
        counts = np.bincount(region, minlength=n)
        with np.errstate(invalid="ignore", divide="ignore"):  # an empty region's centroid is NaN
            cx, cy = np.bincount(region, x, n) / counts, np.bincount(region, y, n) / counts
        levels += [level] * n
        cluster += list(range(n))
        parent += [int(p) for p in above]
        label += names[level]
        size += counts.tolist()
        xs += cx.tolist()
        ys += cy.tolist()
    columns = [levels, cluster, parent, label, size, xs, ys]
    return pa.table(dict(zip(CLUSTERS_SCHEMA.names, columns)), schema=CLUSTERS_SCHEMA)
