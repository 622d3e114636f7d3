"""Each command's settings: plain dataclasses with their defaults and explanations (the one source of both).

The library takes these dataclasses (or plain arguments) and never imports Hydra or omegaconf: the
CLI (pipeline/cli.py) composes them from the command line, and ``latent <command> --help`` renders
each key's default and explanation from here. A key whose default is ``REQUIRED`` must be set.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

REQUIRED: Any = "???"  # the default of a key the user must set (omegaconf reads "???" as missing, too)


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its default and the one-line explanation ``--help`` shows."""
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"help": help})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def describe(cls: type) -> list[tuple[str, Any, str, bool]]:
    """``(dotted key, default, explanation, is_section)`` of every key of a config class, in order."""
    rows: list[tuple[str, Any, str, bool]] = []

    def walk(node: type, prefix: str) -> None:
        for f in dataclasses.fields(node):
            key, text = f"{prefix}{f.name}", f.metadata.get("help", "")
            if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
                rows.append((key, None, text, True))
                walk(f.default_factory, f"{key}.")  # type: ignore[arg-type]
            else:
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                rows.append((key, default, text, False))

    walk(cls, "")
    return rows


def missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` still at ``REQUIRED``."""
    missing = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            missing += missing_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, str) and value == REQUIRED:
            missing.append(f"{prefix}{f.name}")
    return missing


def to_plain(value: Any) -> Any:
    """A config (dataclass, enum, list, dict) as plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def to_yaml(cfg: Any) -> str:
    """A config as YAML, for run records."""
    import yaml

    return yaml.safe_dump(to_plain(cfg), sort_keys=False)


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


PRECISION_HELP = "auto (fp16 on CUDA, fp32 on CPU) | fp32 | fp16 | bf16"


# --- latent embed ---------------------------------------------------------------------------------


@dataclass
class InputConfig:
    path: str = setting(REQUIRED, "folder of images, WebDataset tars (folder or brace pattern), or a table file/folder")
    format: InputFormat = setting(InputFormat.auto, "auto | images | webdataset | parquet | csv | jsonl")
    image_column: str | None = setting(
        None,
        "tables: column of image paths or bytes (null: image, image_path, img, jpg, path, filepath, file, "
        "image_bytes if present)",
    )
    text_column: str | None = setting(None, "tables: column of texts (null: text, caption, txt if present)")
    id_column: str | None = setting(None, "tables: column of stable ids (null: id, key if present, else file and row)")
    files_per_task: int = setting(256, "image files per read task")


@dataclass
class ModelConfig:
    name: str = setting("ViT-B-32", "an open_clip model name (presets: model=vit-b-32 | vit-l-14)")
    pretrained: str | None = setting(
        "laion2b_s34b_b79k", "open_clip pretrained tag, a local checkpoint file, or null (random weights)"
    )
    precision: Precision = setting(Precision.auto, PRECISION_HELP)
    device: Device = setting(Device.auto, "auto (cuda when the cluster has GPUs) | cpu | cuda")


@dataclass
class OutputConfig:
    path: str = setting(REQUIRED, "the embedding dataset to write (docs/embedding-dataset.md)")
    dtype: OutputDtype = setting(OutputDtype.float16, "float16 | float32")
    rows_per_shard: int = setting(8192, "rows per Parquet shard")


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
    stall_timeout_s: float = setting(
        600.0, "no new rows this long while the cluster cannot run the stages (a lost node): the job fails, saying why"
    )


@dataclass
class EmbedResources:
    """Resources of the embed job's stages; nulls are derived from the cluster at the edge."""

    encoder_actors: int | None = setting(None, "null: one per GPU (gpus_per_encoder each), or one CPU actor per node")
    gpus_per_encoder: float = setting(1.0, "GPUs per encoder actor (CUDA only)")
    cpus_per_encoder: float | None = setting(
        None, "null: 1 reserved (a CPU actor runs torch on all of its node's cores)"
    )
    cpus_per_reader: float = setting(1.0, "CPUs per decode/preprocess task")
    object_store_budget: int | None = setting(
        2147483648, "bytes in flight between stages: readers wait beyond it, so memory stays flat (null: Ray's default)"
    )


@dataclass
class DecodeConfig:
    """Where and how images are decoded (docs/embedding-dataset.md, "Decoding")."""

    device: Device = setting(
        Device.auto,
        "auto (cuda when the encoder is on a GPU) | cpu (Pillow in decode tasks: exact) | cuda (the encoder gets "
        "the JPEG bytes and decodes each batch with nvJPEG; cosine >= 0.995 to exact; other images take Pillow)",
    )
    draft: bool = setting(
        False,
        "CPU path: decode JPEGs >= 4x the model input at a reduced DCT scale (Pillow's draft) before the exact "
        "resize; faster, vectors not bit-equal (cosine >= 0.995)",
    )


@dataclass
class EmbedConfig:
    input: InputConfig = setting(InputConfig, "the corpus")
    model: ModelConfig = setting(ModelConfig, "the open_clip encoder")
    output: OutputConfig = setting(OutputConfig, "the embedding dataset")
    ray: RayConfig = setting(RayConfig, "where the job runs")
    resources: EmbedResources = setting(EmbedResources, "per stage; on a cluster the nulls are derived from it")
    decode: DecodeConfig = setting(DecodeConfig, "where and how images are decoded (docs/embedding-dataset.md)")
    modality: Modality = setting(
        Modality.auto, "auto (images, plus captions where they exist; else texts) | image | text | both"
    )
    batch_size: int = setting(256, "rows per encoder batch")
    max_error_fraction: float = setting(0.1, "fail the job once more than this fraction of rows failed")
    max_image_pixels: int = setting(89478485, "larger images are recorded as errors (decompression bombs)")
    progress: bool = setting(True, "show a progress bar")


# --- latent index -------------------------------------------------------------------------------


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


# --- latent search / latent knn -----------------------------------------------------------------


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


@dataclass
class QueryConfig:
    """One query: exactly one of these is set."""

    text: str | None = setting(None, 'query.text="a cat playing jazz"')
    image: str | None = setting(None, "query.image=/path/to/photo.jpg")
    vector: list[float] | None = setting(
        None, "query.vector=[0.1,0.2,...] (the index's dimension; normalised for cosine indexes)"
    )
    id: str | None = setting(None, "query.id=ITEM: the item's stored vector (search by a result)")
    terms: str | None = setting(
        None, "query.terms=\"id:ITEM + 'cyberpunk' - 0.5*'daylight'\": weighted terms (also image:PATH)"
    )


@dataclass
class SearchCommandConfig:
    index: IndexPathConfig = setting(IndexPathConfig, "the index")
    query: QueryConfig = setting(QueryConfig, "exactly one of these")
    model: SearchModelConfig = setting(SearchModelConfig, "the query encoder: always the model recorded in the index")
    k: int = setting(10, "how many hits")
    output: SearchOutput = setting(SearchOutput.table, "table | json")


@dataclass
class VerifyCommandConfig:
    """`latent verify`: check every file of an index directory against the checksums in its index.json."""

    index: IndexPathConfig = setting(IndexPathConfig, "the index directory to check")


class QueryKind(str, Enum):
    auto = "auto"  # the one vector column, else an image column, else a text column
    vector = "vector"
    image = "image"
    text = "text"


@dataclass
class KnnInputConfig:
    path: str = setting(
        REQUIRED, "a Parquet/CSV/JSONL file or folder of them, or an embedding dataset (`latent embed`)"
    )
    format: InputFormat = setting(InputFormat.auto, "auto (by extension) | parquet | csv | jsonl")
    kind: QueryKind = setting(
        QueryKind.auto,
        "auto (the one embedding column, else an image column, else a text column) | vector | image | text",
    )
    column: str | None = setting(None, "the query column (null: found by kind)")
    id_column: str | None = setting(None, 'null: `id` or `key` if present, else "<file>:<row>"')


@dataclass
class KnnOutputConfig:
    path: str = setting(REQUIRED, "neighbors/ (and groups/ with threshold) are written here; see docs/search.md")
    rows_per_shard: int = setting(65536, "rows per Parquet shard")


@dataclass
class KnnResources:
    actors: int | None = setting(
        None, "searcher actors, each opening the memory-mapped index once (null: one per GPU, or one per node)"
    )
    cpus_per_actor: float | None = setting(
        None, "null: 1 reserved (a CPU actor runs FAISS and torch on all of its node's cores)"
    )
    gpus_per_actor: float = setting(1.0, "text/image queries on CUDA only")
    cpus_per_reader: float = setting(1.0, "CPUs per read task")


@dataclass
class KnnCommandConfig:
    input: KnnInputConfig = setting(KnnInputConfig, "the queries")
    index: IndexPathConfig = setting(IndexPathConfig, "the index")
    output: KnnOutputConfig = setting(KnnOutputConfig, "where the neighbours go")
    model: SearchModelConfig = setting(SearchModelConfig, "text/image queries: the model recorded in the index")
    ray: RayConfig = setting(RayConfig, "where the job runs")
    resources: KnnResources = setting(KnnResources, "per stage")
    k: int = setting(10, "neighbours per query")
    threshold: float | None = setting(
        None, "cosine in [-1, 1]: also write near-duplicate groups (connected components of pairs >= threshold)"
    )
    batch_size: int = setting(1024, "queries per encoder batch and FAISS search")
    progress: bool = setting(True, "show a progress bar")


# --- latent serve -------------------------------------------------------------------------------


class ServeBackend(str, Enum):
    single = "single"  # one uvicorn process searching the whole index
    ray = "ray"  # Ray Serve: a deployment per shard, an encoder, an ingress merging top-k (docs/cluster.md)


@dataclass
class ServeMapConfig:
    path: str | None = setting(None, "a map directory from `latent map` (null: <index>.map beside the index, if any)")


@dataclass
class ServeAuthConfig:
    """Who may use the API (docs/http-api.md#authentication): nothing set, anyone who can connect (fine on loopback)."""

    token: str | None = setting(
        None,
        "a bearer token (16+ characters, e.g. `openssl rand -hex 32`) that every route but /healthz and the "
        "page's own files requires: Authorization: Bearer TOKEN, else 401; null: no authentication",
    )
    token_file: str | None = setting(None, "or a file holding the token (one line): keeps it out of the command line")


@dataclass
class ServeCorsConfig:
    """The CORS allow-list of the API."""

    origins: list[str] = setting(
        [],
        "web origins (scheme://host[:port], or *) whose pages may call the API, e.g. [https://app.example.com]; "
        "[]: no CORS headers, same-origin only",
    )


@dataclass
class ServeConfig:
    """`latent serve`: the HTTP API and web page over one index directory (docs/http-api.md)."""

    index: IndexPathConfig = setting(IndexPathConfig, "the index to serve")
    model: SearchModelConfig = setting(SearchModelConfig, "the query encoder: the model recorded in the index")
    backend: ServeBackend = setting(
        ServeBackend.single, "single (one process) | ray (Ray Serve: a deployment per shard; docs/cluster.md)"
    )
    ray: RayConfig = setting(RayConfig, "backend=ray: the cluster")
    replicas: int = setting(1, "backend=ray: replicas of each shard's deployment (throughput, failover)")
    encoder_replicas: int = setting(1, "backend=ray: replicas of the query encoder (a GPU each if the cluster has any)")
    shard_timeout_s: float = setting(10.0, "backend=ray: a shard answering later than this fails the query with 503")
    replica_cpus: float = setting(1.0, "backend=ray: CPUs each replica reserves (a shard's FAISS uses as many threads)")
    host: str = setting("127.0.0.1", "127.0.0.1: this machine only; 0.0.0.0: every interface (set auth.token then)")
    port: int = setting(8080, "0: any free port")
    max_k: int = setting(100, "largest k a query may ask for (more gets 400)")
    default_k: int = setting(10, "k of a query that gives none")
    max_body_bytes: int = setting(10485760, "larger request bodies (base64 images) get 413")
    max_batch: int = setting(64, "most queries of one kind answered by one Searcher call")
    batch_wait_ms: float = setting(2.0, "a text/image query waits up to this long for others to share its encoder call")
    max_image_pixels: int = setting(89478485, "thumbnails: indexed images above this many pixels get none")
    max_query_pixels: int = setting(
        16777216,
        "query images decoding to more pixels get 400, checked from the header before decoding (4096x4096: "
        "~64 MB decoded); JPEGs count at their reduced decoding scale",
    )
    max_decodes: int = setting(
        2,
        "image decodes at once (peak memory about max_decodes x 8 x max_query_pixels bytes); a query image "
        "past it gets 503 + Retry-After, a thumbnail waits up to 10 s for a slot",
    )
    decode_retry_after_s: int = setting(1, "the Retry-After (seconds) of that 503")
    thumbnail_size: int = setting(256, "long side of thumbnails, pixels (JPEG)")
    thumbnail_cache: int = setting(1024, "thumbnails kept in memory")
    warmup: bool = setting(True, "build the query encoder at start, so the first query is fast")
    log_level: str = setting("info", "uvicorn's: critical | error | warning | info | debug")
    access_log: bool = setting(False, "one log line per request")
    map: ServeMapConfig = setting(ServeMapConfig, "the map drawn at /map (docs/map.md)")
    auth: ServeAuthConfig = setting(ServeAuthConfig, "who may use the API (docs/http-api.md#authentication)")
    cors: ServeCorsConfig = setting(ServeCorsConfig, "which web pages may call the API from a browser")


# --- latent render-job / submit-job ---------------------------------------------------------------


class JobKind(str, Enum):
    ray = "ray"  # a Ray Jobs API submission to a running cluster
    k8s = "k8s"  # a KubeRay RayJob manifest
    slurm = "slurm"  # an sbatch script: a Ray head and workers across the allocation, then the job


@dataclass
class JobHead:
    """The head node (k8s: its container's limits; slurm: the first node of the allocation)."""

    cpus: int = setting(4, "CPUs the head offers to tasks (the driver and the GCS need some too)")
    memory: str = setting("16Gi", "k8s: the head container's memory limit (slurm: every node gets workers.memory)")


@dataclass
class JobWorkers:
    """Each worker node; a SLURM allocation gets ``count`` + 1 nodes (the head runs tasks too)."""

    count: int = setting(2, "worker nodes besides the head")
    cpus: int = setting(8, "CPUs per worker")
    gpus: int = setting(1, "GPUs per worker: one encoder actor per GPU (resources.encoder_actors: null)")
    memory: str = setting("32Gi", "k8s quantity (32Gi) / SLURM --mem of every node (32G)")


@dataclass
class RuntimeEnvConfig:
    working_dir: str | None = setting(
        None, 'kind=ray: a local folder ("." uploads this project); k8s: a remote zip URI; null: none'
    )
    pip: list[str] = setting([], "extra pip packages installed on every node for the job, e.g. [open_clip_torch]")
    excludes: list[str] = setting(
        [".git", ".venv", "**/__pycache__", "bench/results", "demo-output", "outputs", "multirun", "*.egg-info"],
        "left out of an uploaded working_dir",
    )
    env_vars: dict[str, str] = setting({}, "environment of the job on every node: +runtime_env.env_vars.NAME=value")


@dataclass
class K8sJobConfig:
    namespace: str | None = setting(None, "null: the current namespace")
    image: str = setting(
        "rayproject/ray:2.60.0-py311", "a Ray image with latent installed (build FROM it: pip install latent)"
    )
    ttl_seconds: int = setting(3600, "the finished job's cluster stays this long for logs, then is deleted")


@dataclass
class SlurmJobConfig:
    partition: str | None = setting(None, "--partition (null: the cluster's default)")
    account: str | None = setting(None, "--account (null: none)")
    time: str = setting("04:00:00", "--time")
    setup: str = setting("source .venv/bin/activate", "shell run on every node before `ray start`: modules, the venv")
    port: int = setting(6379, "the head's GCS port")


@dataclass
class JobConfig:
    kind: JobKind = setting(JobKind.ray, "ray (submit to a running cluster) | k8s (RayJob manifest) | slurm (sbatch)")
    name: str = setting("latent-job", "the job's name (RayJob metadata.name, SLURM --job-name, submission id prefix)")
    command: str = setting(REQUIRED, "the latent command line, given after `--`")
    address: str = setting("http://127.0.0.1:8265", "kind=ray: the cluster's dashboard, which serves the Jobs API")
    wait: bool = setting(True, "kind=ray: follow the job's logs until it ends and exit with its status")
    timeout_s: int = setting(86400, "kind=ray with wait: stop the job if it runs longer than this")
    out: str | None = setting(None, "render-job: write the manifest/script here (null: print it)")
    head: JobHead = setting(JobHead, "the head node")
    workers: JobWorkers = setting(JobWorkers, "each worker node")
    runtime_env: RuntimeEnvConfig = setting(RuntimeEnvConfig, "what every node gets for the job (Ray runtime_env)")
    k8s: K8sJobConfig = setting(K8sJobConfig, "kind=k8s")
    slurm: SlurmJobConfig = setting(SlurmJobConfig, "kind=slurm")


# conf/<name>.yaml composes each of these (pipeline/cli.py registers them with Hydra as <name>_schema)
SCHEMAS: dict[str, type] = {
    "embed": EmbedConfig,
    "index": IndexCommandConfig,
    "search": SearchCommandConfig,
    "verify": VerifyCommandConfig,
    "knn": KnnCommandConfig,
    "serve": ServeConfig,
    "job": JobConfig,
}


# --- latent map ---------------------------------------------------------------------------------


class MapMode(str, Enum):
    create = "create"  # a new map; fails if output.path holds one
    append = "append"  # place the source's new rows on the map at output.path, moving no existing point
    overwrite = "overwrite"  # build anew and replace output.path atomically


class MapMethod(str, Enum):
    landmarks = "landmarks"  # UMAP of a landmark sample, every other row placed from its nearest landmarks
    umap = "umap"  # UMAP of every row (small corpora)
    pca = "pca"  # the landmarks' two principal axes


class CoarseRegions(str, Enum):
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


@dataclass
class MapParams:
    mode: MapMode = setting(MapMode.create, "create | append (place new rows, move none) | overwrite")
    method: MapMethod = setting(
        MapMethod.landmarks, "landmarks (UMAP of a sample, the rest placed from it: linear) | umap (every row) | pca"
    )
    landmarks: int = setting(20000, "rows in the seeded landmark sample laid out by UMAP")
    neighbors: int = setting(15, "UMAP's n_neighbors (the landmarks' kNN graph, by FAISS)")
    min_dist: float = setting(0.1, "UMAP's min_dist")
    place_k: int = setting(8, "nearest landmarks a row is placed from (and votes its region with)")
    metric: str = setting("auto", "auto (ip for unit vectors, else l2) | ip | l2")
    seed: int = setting(0, "landmark sample, UMAP, k-means: the same seed gives the same map")
    device: Device = setting(Device.auto, "auto (cuML's UMAP when it imports and a GPU is visible) | cpu | cuda")
    levels: int = setting(2, "region levels, coarse -> fine (each level splits the one above)")
    split: int = setting(8, "at most this many regions per region of the level above")
    min_cluster_size: int | None = setting(None, "HDBSCAN's min_cluster_size (null: landmarks / 200, at least 10)")
    coarse: CoarseRegions = setting(
        CoarseRegions.hdbscan, "level 0: hdbscan (islands of the layout) | kmeans (coarse_k regions in latent space)"
    )
    coarse_k: int = setting(20, "regions of level 0 when coarse=kmeans")
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
    tasks: int | None = setting(None, "placement tasks in flight (null: one per cluster CPU)")
    image: bool = setting(True, "write map.png")
    progress: bool = setting(True, "a progress bar")


SCHEMAS["map"] = MapCommandConfig


@dataclass
class PathCommandConfig:
    """`latent path from=ID to=ID steps=N`: the items along the great circle between two items' vectors."""

    index: IndexPathConfig = setting(IndexPathConfig, "an index directory written by `latent index`")
    model: SearchModelConfig = setting(SearchModelConfig, "text/image encoder (not needed for a route between items)")
    start: str = setting(REQUIRED, "from=ID on the command line: the item the route starts at")
    end: str = setting(REQUIRED, "to=ID: the item it ends at")
    steps: int = setting(8, "points on the great circle (2..1000), both ends included")
    output: SearchOutput = setting(SearchOutput.table, "table | json")


SCHEMAS["path"] = PathCommandConfig
