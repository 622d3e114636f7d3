"""`latent map`: 2-D positions, named regions, map.json and map.png of an embedding dataset or index."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.common import COMMIT_EVERY_HELP, COMMIT_EVERY_S, Device, RayConfig, SearchModelConfig
from pipeline.config.settings import setting


class MapMode(str, Enum):
    create = "create"  # a new map; fails if output.path holds one
    append = "append"  # place the source's new rows on the map at output.path, moving no existing point
    overwrite = "overwrite"  # build anew and replace output.path atomically


class MapMethod(str, Enum):
    landmarks = "landmarks"  # UMAP of a landmark sample, every other row placed from its nearest landmarks
    umap = "umap"  # UMAP of every row (small corpora)
    pca = "pca"  # the landmarks' two principal axes


class PlaceMethod(str, Enum):
    cell = "cell"  # in its nearest landmark's cell, a step toward its nearest landmarks: keeps nearest neighbours
    attract = "attract"  # their weighted average, then UMAP's attraction to them: a 10 % sample's neighbours


class CoarseRegions(str, Enum):  # the density regions the finest level splits (the key's name is historical)
    hdbscan = "hdbscan"  # density islands of the layout
    kmeans = "kmeans"  # k-means in latent space (coarse_k regions)


class LabelMethod(str, Enum):
    auto = "auto"  # text when the rows have captions/texts, zero-shot when the source has an open_clip model
    text = "text"
    zero_shot = "zero_shot"
    none = "none"


@dataclass
class MapInputConfig:
    path: str | None = setting(None, "an embedding dataset (or .npy / Parquet shards) to map ...")
    column: str | None = setting(None, "null: the dataset's one embedding column")


@dataclass
class MapIndexConfig:
    path: str | None = setting(None, "... or the items of this index directory (exactly one of the two)")


@dataclass
class MapOutputConfig:
    path: str | None = setting(None, "the map directory; null with index.path: <index>.map beside the index")
    rows_per_shard: int = setting(65536, "points per Parquet shard")
    commit_every_s: float | None = setting(COMMIT_EVERY_S, COMMIT_EVERY_HELP)


@dataclass
class MapResources:
    actors: int | None = setting(None, "placer actors, each building its landmark index once (null: one per node)")
    cpus_per_actor: float | None = setting(None, "null: 1 reserved (an actor runs FAISS on its node's cores)")
    cpus_per_reader: float = setting(1.0, "CPUs per read task")


@dataclass
class MapParams:
    mode: MapMode = setting(MapMode.create, "create | append (place new rows, move none) | overwrite")
    method: MapMethod = setting(
        MapMethod.landmarks, "landmarks (UMAP of a sample, the rest placed from it: linear) | umap (every row) | pca"
    )
    landmarks: int = setting(20000, "rows in the seeded landmark sample laid out by UMAP")
    neighbors: int = setting(15, "UMAP's n_neighbors (the landmarks' kNN graph, by FAISS)")
    min_dist: float = setting(0.1, "UMAP's min_dist")
    place_k: int = setting(15, "nearest landmarks a row is placed from (map.place) and votes its region with")
    place: PlaceMethod = setting(
        PlaceMethod.cell,
        "cell (each row near its nearest landmark: keeps each row's nearest neighbours) | attract (weighted "
        "average + UMAP attraction: keeps a sample's neighbours a little better, loses the nearest; docs/map.md)",
    )
    metric: str = setting("auto", "auto (ip for unit vectors, else l2) | ip | l2")
    seed: int = setting(0, "landmark sample, UMAP, k-means: the same seed gives the same map")
    device: Device = setting(Device.auto, "auto (cuML's UMAP when it imports and a GPU is visible) | cpu | cuda")
    levels: int = setting(4, "at most this many region levels, coarse -> fine (the data decides how many)")
    top_regions: int | None = setting(None, "regions of the top level (null: the clearest cut between 5 and 30)")
    split: int = setting(64, "the finest level: at most this many k-means parts per density region")
    min_cluster_size: int | None = setting(None, "HDBSCAN's min_cluster_size (null: landmarks / 200, at least 20)")
    coarse: CoarseRegions = setting(
        CoarseRegions.hdbscan,
        "the density regions the finest level splits: hdbscan (islands of the layout) | kmeans (coarse_k, latent)",
    )
    coarse_k: int = setting(20, "density regions when coarse=kmeans")
    labels: LabelMethod = setting(
        LabelMethod.auto, "auto | text (class-based TF-IDF of captions) | zero_shot (the model's text tower) | none"
    )
    vocabulary: str | None = setting(None, "zero-shot concepts, one per line (null: the 1000+ shipped with latent)")
    max_full_umap: int = setting(200000, "method=umap is refused above this many rows (use landmarks)")


@dataclass
class MapQualityConfig:
    sample: int = setting(10000, "rows whose neighbourhood preservation is measured into map.json (0: skip)")
    queries: int = setting(2000, "of them, rows whose nearest neighbours are compared")
    k: int = setting(10, "neighbours compared")
    reference: bool = setting(True, "also fit umap-learn on the sample: the figure to compare with")
    all_rows: bool = setting(True, "also each query's k nearest among all rows, not the sample's (one more read)")


@dataclass
class MapCommandConfig:
    """`latent map`: 2-D positions of every row, named regions, map.json, map.png (docs/map.md)."""

    input: MapInputConfig = setting(MapInputConfig, "an embedding dataset ...")
    index: MapIndexConfig = setting(MapIndexConfig, "... or an index")
    output: MapOutputConfig = setting(MapOutputConfig, "where the map goes")
    map: MapParams = setting(MapParams, "layout, regions and labels")
    quality: MapQualityConfig = setting(MapQualityConfig, "measured into map.json")
    model: SearchModelConfig = setting(SearchModelConfig, "the text tower for zero-shot labels: the source's model")
    ray: RayConfig = setting(RayConfig, "where placement runs")
    resources: MapResources = setting(MapResources, "placement's stages (the job runner)")
    batch_size: int = setting(16384, "rows per placement batch (one nearest-landmark search)")
    image: bool = setting(True, "write map.png")
    progress: bool = setting(True, "a progress bar")
