"""`latent serve`: the HTTP API and web page over an index directory."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.common import IndexPathConfig, RayConfig, SearchModelConfig
from pipeline.config.settings import setting


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
    replica_cpus: float | None = setting(
        None,
        "backend=ray: CPUs each replica reserves (a shard's FAISS uses as many threads, at least 1); null: 1 each "
        "when the cluster has that many, else the equal share that fits (logged)",
    )
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
    search_threads: int = setting(
        0, "FAISS threads of the one-process server's searches; 0: every core but one (the event loop's)"
    )
    max_threads: int = setting(
        16,
        "threads for item, thumbnail, map and image-decoding requests (each reserves stack address space: under "
        "ulimit -v a request that cannot get a thread gets 503 + Retry-After)",
    )
    thumbnail_size: int = setting(256, "long side of thumbnails, pixels (JPEG)")
    thumbnail_cache: int = setting(1024, "thumbnails kept in memory")
    warmup: bool = setting(True, "build the query encoder at start, so the first query is fast")
    log_level: str = setting("info", "uvicorn's: critical | error | warning | info | debug")
    access_log: bool = setting(False, "one log line per request")
    map: ServeMapConfig = setting(ServeMapConfig, "the map drawn at /map (docs/map.md)")
    auth: ServeAuthConfig = setting(ServeAuthConfig, "who may use the API (docs/http-api.md#authentication)")
    cors: ServeCorsConfig = setting(ServeCorsConfig, "which web pages may call the API from a browser")
