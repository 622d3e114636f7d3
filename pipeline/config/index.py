"""`latent index` (build or append to an index directory) and `latent verify` (check one)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.common import Device, IndexPathConfig, RayConfig
from pipeline.config.settings import REQUIRED, setting


class Metric(str, Enum):
    ip = "ip"  # inner product: cosine on the unit vectors of an embedding dataset
    l2 = "l2"


class IndexMode(str, Enum):
    create = "create"  # a new index; fails if index.path already holds one
    append = "append"  # add new rows to the index at index.path, without retraining
    overwrite = "overwrite"  # build anew and replace index.path atomically


class Storage(str, Enum):
    memory = "memory"  # the index in one file (or one per shard), memory-mapped when searched
    ondisk = "ondisk"  # IVF inverted lists in a separate memory-mapped file per shard (indexes larger than RAM)


class TextIndex(str, Enum):
    none = "none"  # no keyword index
    bm25 = "bm25"  # a BM25 keyword index of the items' `text` (an error when the input has no text column)
    auto = "auto"  # bm25 when some items have a text, else none


class DuplicatePolicy(str, Enum):
    error = "error"  # refuse the append, naming the id (nothing written)
    skip = "skip"  # keep the vector already indexed; the input's row is left out (counted, warned)
    replace = "replace"  # the input's vector replaces the indexed one (same label, metadata updated)


@dataclass
class IndexInputConfig:
    path: str = setting(REQUIRED, "embedding dataset, Parquet folder with an embedding column, or folder of .npy files")
    column: str | None = setting(None, "null: the dataset's one embedding column (`embedding` or `*_embedding`)")


@dataclass
class IndexBuildConfig:
    path: str = setting(REQUIRED, "the index directory to write (docs/index-directory.md)")
    mode: IndexMode = setting(
        IndexMode.create, "create (fails if path holds an index) | append (new rows, no retraining) | overwrite"
    )
    factory: str = setting("auto", "auto (from size, dim, memory, target recall) | any FAISS index_factory string")
    metric: Metric = setting(Metric.ip, "ip (cosine on unit vectors) | l2")
    target_recall: float = setting(
        0.95, "the cheapest setting whose recall@k (the lower end of its 95% interval) reaches this"
    )
    k: int = setting(10, "the k of the recall@k target")
    max_memory: str = setting(
        "auto", "budget for the index and the build's buffers: auto (half the free RAM) | 4G | 512M | bytes"
    )
    train_sample: int = setting(100000, "at most this many vectors sampled to train the index")
    tune_queries: int = setting(
        1000, "corpus vectors held out of the index while it is tuned (fresh queries): recall and throughput"
    )
    batch_size: int = setting(16384, "vectors read and added per batch")
    device: Device = setting(Device.auto, "auto (a GPU when faiss sees one) | cpu | cuda")
    seed: int = setting(0, "seed of sampling and training")
    shards: str = setting(
        "1",
        "N shards sharing one trained quantizer, built by Ray tasks across the cluster | auto (the fewest shards "
        "each within index.max_memory); IVF without re-rank, or Flat (docs/index-directory.md)",
    )
    storage: Storage = setting(
        Storage.memory, "memory | ondisk (IVF lists in a memory-mapped .ivfdata file per shard; not fast-scan x4fs)"
    )
    text: TextIndex = setting(
        TextIndex.none,
        "none | bm25 (a keyword index of the items' text, for search mode=hybrid; kept in sync by append) | auto "
        "(bm25 when some items have a text)",
    )
    on_duplicate_id: DuplicatePolicy = setting(
        DuplicatePolicy.error,
        "append: an id the index holds with a DIFFERENT vector: error (name it, write nothing) | skip (keep the "
        "indexed vector) | replace (take the input's); the same id with the same vector is skipped as indexed",
    )


@dataclass
class ParallelAddConfig:
    min_vectors: int | None = setting(20000000, "add on Ray from this many vectors (IVF indexes only; null: never)")
    tasks: int | None = setting(None, "Ray add tasks (null: one per cluster CPU, at most one per shard)")


@dataclass
class IndexCommandConfig:
    input: IndexInputConfig = setting(IndexInputConfig, "the vectors")
    index: IndexBuildConfig = setting(IndexBuildConfig, "the index to build")
    parallel: ParallelAddConfig = setting(ParallelAddConfig, "the add phase on Ray")
    ray: RayConfig = setting(RayConfig, "where the parallel add runs")
    progress: bool = setting(True, "show progress bars")


@dataclass
class VerifyCommandConfig:
    """`latent verify`: check every file of an index directory against the checksums in its index.json."""

    index: IndexPathConfig = setting(IndexPathConfig, "the index directory to check")
