"""Structured configs: the typed schema of every command.

The dataclasses declare keys and types only; every default lives in ``conf/*.yaml`` (the single
source of defaults), which Hydra merges onto these schemas. Library code takes the dataclasses;
``compose`` builds one from ``conf/`` for callers who are not behind a Hydra entry point.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

CONFIG_PACKAGE = "pipeline.conf"  # conf/ is installed as this package (see pyproject.toml)


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


class OutputDtype(str, Enum):
    float16 = "float16"
    float32 = "float32"


@dataclass
class InputConfig:
    path: str = MISSING
    format: InputFormat = MISSING
    image_column: str | None = MISSING
    text_column: str | None = MISSING
    id_column: str | None = MISSING
    files_per_task: int = MISSING


@dataclass
class ModelConfig:
    name: str = MISSING
    pretrained: str | None = MISSING  # open_clip tag, local checkpoint path, or null (random weights)
    precision: Precision = MISSING
    device: Device = MISSING


@dataclass
class OutputConfig:
    path: str = MISSING
    dtype: OutputDtype = MISSING
    rows_per_shard: int = MISSING


@dataclass
class RayConfig:
    """Where jobs run: shared by every command that uses Ray (conf/ray/*.yaml)."""

    address: str = MISSING  # "": start a local Ray; "auto", "host:port" or "ray://…": join a cluster
    num_cpus: int | None = MISSING  # local Ray only
    num_gpus: int | None = MISSING  # local Ray only


@dataclass
class EmbedResources:
    """Resources of the embed job's stages; nulls are derived from the cluster at the edge."""

    encoder_actors: int | None = MISSING  # null: one per GPU, or one CPU actor
    gpus_per_encoder: float = MISSING
    cpus_per_encoder: float | None = MISSING  # null: 1 reserved (a CPU actor then runs torch on all cores)
    cpus_per_reader: float = MISSING
    object_store_budget: int | None = MISSING  # bytes of data in flight, across stages; null: Ray Data's default


@dataclass
class EmbedConfig:
    input: InputConfig = field(default_factory=InputConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    resources: EmbedResources = field(default_factory=EmbedResources)
    modality: Modality = MISSING
    batch_size: int = MISSING
    max_error_fraction: float = MISSING
    max_image_pixels: int = MISSING
    progress: bool = MISSING


def register_configs() -> None:
    """Register each command's schema under ``<command>_schema`` for conf/<command>.yaml."""
    store = ConfigStore.instance()
    for name, node in SCHEMAS.items():
        store.store(name=f"{name}_schema", node=node)


SCHEMAS: dict[str, type] = {"embed": EmbedConfig}


def compose(command: str, overrides: list[str] | None = None) -> Any:
    """The typed config of ``command`` with conf/'s defaults and ``key=value`` overrides applied."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    register_configs()
    with initialize_config_module(config_module=CONFIG_PACKAGE, version_base=None):
        cfg = hydra_compose(config_name=command, overrides=list(overrides or []))
    return to_dataclass(cfg)


def to_dataclass(cfg: Any) -> Any:
    """A composed Hydra ``DictConfig`` as its schema's dataclass."""
    return OmegaConf.to_object(cfg)


def to_yaml(cfg: Any) -> str:
    """A dataclass config as YAML, for run records."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


# --- latent index -------------------------------------------------------------------------------


class Metric(str, Enum):
    ip = "ip"  # inner product: cosine on the unit vectors of an embedding dataset
    l2 = "l2"


class IndexMode(str, Enum):
    create = "create"  # a new index; fails if index.path already holds one
    append = "append"  # add new rows to the index at index.path, without retraining
    overwrite = "overwrite"  # build anew and replace index.path atomically


@dataclass
class IndexInputConfig:
    path: str = MISSING
    column: str | None = MISSING  # null: the dataset's one embedding column


@dataclass
class IndexBuildConfig:
    path: str = MISSING
    mode: IndexMode = MISSING
    factory: str = MISSING  # "auto" or any FAISS index_factory string
    metric: Metric = MISSING
    target_recall: float = MISSING
    k: int = MISSING
    max_memory: str = MISSING  # "auto" (half the available RAM), "4G", "512M", "1.5GiB" or bytes
    train_sample: int = MISSING
    tune_queries: int = MISSING
    batch_size: int = MISSING
    device: Device = MISSING
    seed: int = MISSING


@dataclass
class ParallelAddConfig:
    min_vectors: int | None = MISSING  # add on Ray from this many vectors (IVF indexes only); null: never
    tasks: int | None = MISSING  # Ray add tasks (null: one per cluster CPU, at most one per shard)


@dataclass
class IndexCommandConfig:
    input: IndexInputConfig = field(default_factory=IndexInputConfig)
    index: IndexBuildConfig = field(default_factory=IndexBuildConfig)
    parallel: ParallelAddConfig = field(default_factory=ParallelAddConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    progress: bool = MISSING


SCHEMAS["index"] = IndexCommandConfig


# --- latent search / latent knn -----------------------------------------------------------------


@dataclass
class SearchModelConfig:
    """The query encoder of a search: the model recorded in the index (its fingerprint), placed here."""

    pretrained: str | None = MISSING  # null: the index's own weights (its open_clip tag, or random weights);
    # a local checkpoint file: used if its sha256 matches the fingerprint's (indexes built from a checkpoint)
    device: Device = MISSING
    precision: Precision = MISSING


class SearchOutput(str, Enum):
    table = "table"  # a ranked table for people
    json = "json"  # one JSON document for scripts


@dataclass
class IndexPathConfig:
    path: str = MISSING  # an index directory written by `latent index`


@dataclass
class QueryConfig:
    """One query: exactly one of these is set."""

    text: str | None = MISSING
    image: str | None = MISSING  # an image file
    vector: list[float] | None = MISSING  # [0.1,0.2,…] with the index's dimension
    id: str | None = MISSING  # an item of the index: search by its stored vector


@dataclass
class SearchCommandConfig:
    index: IndexPathConfig = field(default_factory=IndexPathConfig)
    query: QueryConfig = field(default_factory=QueryConfig)
    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    k: int = MISSING
    output: SearchOutput = MISSING


SCHEMAS["search"] = SearchCommandConfig


class QueryKind(str, Enum):
    auto = "auto"  # the one vector column, else an image column, else a text column
    vector = "vector"
    image = "image"
    text = "text"


@dataclass
class KnnInputConfig:
    path: str = MISSING
    format: InputFormat = MISSING  # auto | parquet | csv | jsonl
    kind: QueryKind = MISSING
    column: str | None = MISSING  # the query column (null: found by kind)
    id_column: str | None = MISSING  # null: `id` if present, else "<file>:<row>"


@dataclass
class KnnOutputConfig:
    path: str = MISSING
    rows_per_shard: int = MISSING


@dataclass
class KnnResources:
    actors: int | None = MISSING  # searcher actors (null: one per GPU for text/image queries on CUDA, else one)
    cpus_per_actor: float | None = MISSING  # null: 1 reserved (the actor's FAISS and torch then use all cores)
    gpus_per_actor: float = MISSING
    cpus_per_reader: float = MISSING


@dataclass
class KnnCommandConfig:
    input: KnnInputConfig = field(default_factory=KnnInputConfig)
    index: IndexPathConfig = field(default_factory=IndexPathConfig)
    output: KnnOutputConfig = field(default_factory=KnnOutputConfig)
    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    resources: KnnResources = field(default_factory=KnnResources)
    k: int = MISSING
    threshold: float | None = MISSING  # cosine: also write near-duplicate groups of pairs scoring >= threshold
    batch_size: int = MISSING
    progress: bool = MISSING


SCHEMAS["knn"] = KnnCommandConfig


# --- latent serve -------------------------------------------------------------------------------


@dataclass
class ServeConfig:
    """`latent serve`: the HTTP API and web page over one index directory (docs/http-api.md)."""

    index: IndexPathConfig = field(default_factory=IndexPathConfig)
    model: SearchModelConfig = field(default_factory=SearchModelConfig)
    host: str = MISSING  # 127.0.0.1: this machine only
    port: int = MISSING  # 0: any free port
    max_k: int = MISSING  # largest k a query may ask for
    default_k: int = MISSING  # k of a query that gives none
    max_body_bytes: int = MISSING  # larger request bodies get 413
    max_batch: int = MISSING  # most queries of one kind in one Searcher call
    batch_wait_ms: float = MISSING  # a text/image query waits this long for others to share its encoder call
    max_image_pixels: int = MISSING  # larger query images are refused (decompression bombs)
    thumbnail_size: int = MISSING  # long side of thumbnails, pixels
    thumbnail_cache: int = MISSING  # thumbnails kept in memory
    warmup: bool = MISSING  # build the query encoder at start (else on the first text/image query)
    log_level: str = MISSING
    access_log: bool = MISSING


SCHEMAS["serve"] = ServeConfig

# --- latent render-job / submit-job ---------------------------------------------------------------


class JobKind(str, Enum):
    ray = "ray"  # a Ray Jobs API submission to a running cluster
    k8s = "k8s"  # a KubeRay RayJob manifest
    slurm = "slurm"  # an sbatch script: a Ray head and workers across the allocation, then the job


@dataclass
class JobHead:
    """The head node (k8s: its container's limits; slurm: the first node of the allocation)."""

    cpus: int = MISSING  # CPUs the head offers to tasks (the driver and the GCS need some too)
    memory: str = MISSING  # k8s quantity (16Gi) / SLURM --mem (16G)


@dataclass
class JobWorkers:
    """Each worker node; a SLURM allocation gets ``count`` + 1 nodes (the head runs tasks too)."""

    count: int = MISSING
    cpus: int = MISSING
    gpus: int = MISSING
    memory: str = MISSING


@dataclass
class RuntimeEnvConfig:
    working_dir: str | None = MISSING  # a local folder (ray: uploaded) or a remote zip URI; null: none
    pip: list[str] = MISSING  # extra packages installed on every node for the job
    excludes: list[str] = MISSING  # left out of an uploaded working_dir
    env_vars: dict[str, str] = MISSING


@dataclass
class K8sJobConfig:
    namespace: str | None = MISSING
    image: str = MISSING  # a Ray image with latent installed
    ttl_seconds: int = MISSING  # how long the finished RayJob's cluster stays for inspection


@dataclass
class SlurmJobConfig:
    partition: str | None = MISSING
    account: str | None = MISSING
    time: str = MISSING  # --time
    setup: str = MISSING  # shell run on every node before `ray start` (modules, the venv)
    port: int = MISSING  # the head's GCS port


@dataclass
class JobConfig:
    kind: JobKind = MISSING
    name: str = MISSING
    command: str = MISSING  # the latent command line the job runs
    address: str = MISSING  # kind=ray: the cluster's dashboard (Jobs API), http://host:8265
    wait: bool = MISSING  # kind=ray: follow the job's logs until it ends, exit with its status
    timeout_s: int = MISSING  # kind=ray with wait: give up (and stop the job) after this long
    out: str | None = MISSING  # render-job: write here (null: print)
    head: JobHead = field(default_factory=JobHead)
    workers: JobWorkers = field(default_factory=JobWorkers)
    runtime_env: RuntimeEnvConfig = field(default_factory=RuntimeEnvConfig)
    k8s: K8sJobConfig = field(default_factory=K8sJobConfig)
    slurm: SlurmJobConfig = field(default_factory=SlurmJobConfig)


SCHEMAS["job"] = JobConfig
