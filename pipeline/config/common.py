"""What several commands share: the value choices (input formats, devices, precisions) and the sections that
every Ray job (``ray``), every reader of an index (``index``) and every query encoder (``model``) take.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.settings import REQUIRED, setting


class InputFormat(str, Enum):
    auto = "auto"
    images = "images"
    webdataset = "webdataset"
    parquet = "parquet"
    csv = "csv"
    jsonl = "jsonl"


class Modality(str, Enum):
    auto = "auto"
    image = "image"
    text = "text"
    both = "both"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


PRECISION_HELP = "auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16"
COMMIT_EVERY_S = 60.0  # a batch job's output.commit_every_s: what a kill -9 can lose, at most (docs/cluster.md)
COMMIT_EVERY_HELP = (
    "commit processed rows at least this often (the first after 10 s), even before a shard is full: a kill loses "
    "at most about this much work; null: by rows_per_shard only"
)


# Where a private Ray's start-up (~55 s more than inline on the loaded 2-core machine) stops paying: inline
# ViT-B-32 embeds 1.5 rows/s there, through Ray 2.6 rows/s (decoding in parallel tasks): equal wall time at
# ~200 rows (docs/benchmarks.md, Batch jobs).
INLINE_MAX_ROWS = 200


@dataclass
class RayConfig:
    """Where jobs run: shared by every command that uses Ray (presets: ray=local | cluster)."""

    address: str = setting(
        "",
        '"": a private Ray started inside the job (never the cluster named by Ray\'s '
        "ray_current_cluster file; RAY_ADDRESS joins one); auto, host:port or ray://…: join a cluster",
    )
    num_cpus: int | None = setting(None, "local Ray only (null: all)")
    num_gpus: int | None = setting(None, "local Ray only (null: all)")
    object_store_memory: int | None = setting(
        None,
        "local Ray only: bytes of Ray's object store (null: Ray's default, 30% of memory; under an address-space "
        "limit, ulimit -v, a quarter of what the limit leaves)",
    )
    stall_timeout_s: float = setting(
        600.0,
        "no new rows this long while the cluster cannot run the stages (a lost node): the job fails, saying why; "
        "a pool that starves its read tasks is restarted smaller after min(30 s, this)",
    )
    inline_max_rows: int = setting(
        INLINE_MAX_ROWS,
        "embed and knn: a job of at most this many rows, with no ray.address or RAY_ADDRESS, runs in this process "
        "without starting Ray (seconds of start-up instead of ~40-80 s; the crossover measured on 2 CPU cores, "
        "docs/cluster.md); 0: always Ray",
    )


@dataclass
class SearchModelConfig:
    """The query encoder of a search: the model recorded in the index (its fingerprint), placed here."""

    pretrained: str | None = setting(
        None,
        "null: the index's own weights (its open_clip tag, or random weights); an index built from a checkpoint "
        "file: that file (used if its sha256 matches)",
    )
    device: Device = setting(Device.auto, "auto (cuda when one is visible) | cpu | cuda")
    precision: Precision = setting(Precision.auto, PRECISION_HELP)


class SearchOutput(str, Enum):
    table = "table"  # a ranked table for people
    json = "json"  # one JSON document for scripts


@dataclass
class IndexPathConfig:
    path: str = setting(REQUIRED, "an index directory written by `latent index`")
