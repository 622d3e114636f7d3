"""`latent search`, `latent path` (one query or route over an index) and `latent knn` (a table of queries)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.common import (
    COMMIT_EVERY_HELP,
    COMMIT_EVERY_S,
    IndexPathConfig,
    InputFormat,
    RayConfig,
    SearchModelConfig,
    SearchOutput,
)
from pipeline.config.settings import REQUIRED, setting


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
    where: str | None = setting(
        None, "where=\"license = 'cc-by' AND year >= 2024\": only items matching it (docs/search.md#filters)"
    )
    verbose: bool = setting(False, "also print the filtered search's plan (to stderr; in json output: `plan`)")
    mode: str = setting(
        "vector", "vector | keyword (BM25 over the items' text) | hybrid (both, fused); needs an index.text index"
    )
    keywords: str | None = setting(None, "the words of mode=keyword|hybrid (default: query.text)")
    keyword_weight: float = setting(
        1.0, "mode=hybrid: the keyword list's weight in the fusion (the vector list's is 1)"
    )


@dataclass
class PathCommandConfig:
    """`latent path from=ID to=ID steps=N`: the items along the great circle between two items' vectors."""

    index: IndexPathConfig = setting(IndexPathConfig, "an index directory written by `latent index`")
    model: SearchModelConfig = setting(SearchModelConfig, "text/image encoder (not needed for a route between items)")
    start: str = setting(REQUIRED, "from=ID on the command line: the item the route starts at")
    end: str = setting(REQUIRED, "to=ID: the item it ends at")
    steps: int = setting(8, "points on the great circle (2..1000), both ends included")
    output: SearchOutput = setting(SearchOutput.table, "table | json")


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
    where_column: str | None = setting(
        None, "a string column holding each query's where= predicate (null or empty: none); ANDed with where"
    )


@dataclass
class KnnOutputConfig:
    path: str = setting(REQUIRED, "neighbors/ (and groups/ with threshold) are written here; see docs/search.md")
    rows_per_shard: int = setting(65536, "rows per Parquet shard")
    commit_every_s: float | None = setting(COMMIT_EVERY_S, COMMIT_EVERY_HELP)


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
    where: str | None = setting(None, 'where="...": neighbours only among items matching it (docs/search.md#filters)')
    threshold: float | None = setting(
        None, "cosine in [-1, 1]: also write near-duplicate groups (connected components of pairs >= threshold)"
    )
    batch_size: int = setting(1024, "queries per encoder batch and FAISS search")
    progress: bool = setting(True, "show a progress bar")
