"""The index directory's format (docs/index-directory.md): its version, file names and index.json.

What a reader and a writer of an index directory agree on, apart from how the files are written
(pipeline/index/store/directory.py) and how shard files are laid out (shards.py, ondisk.py).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss

from pipeline.errors import check_format_version
from pipeline.index.store.integrity import IndexCorrupted
from pipeline.index.store.ondisk import ONDISK, lists_file
from pipeline.io.shards import EmbeddingInfo

FORMAT_VERSION = 2  # the newest format this latent reads and writes (2: sharded and on-disk indexes)
SINGLE_FILE_FORMAT = 1  # what a one-file, in-memory index directory is still written as (older latents read it)
INDEX_FILE = "index.faiss"
ITEMS_FILE = "items.arrow"
IDS_FILE = "ids.arrow"
INFO_FILE = "index.json"
ITEMS_BATCH_ROWS = 4096  # rows per record batch of items.arrow: label -> (label // rows, label % rows)
IDS_BATCH_ROWS = 4096
METRICS = {"ip": faiss.METRIC_INNER_PRODUCT, "l2": faiss.METRIC_L2}
CHECKED_FILES = (INDEX_FILE, ITEMS_FILE, IDS_FILE)  # the files index.json records a checksum of


@dataclass
class Recall:
    """recall@k of the index against exact search, measured on ``queries`` held-out corpus vectors."""

    k: int
    value: float
    queries: int
    target: float | None = None
    lower: float | None = None  # the 95% Wilson interval of ``value`` over the queries (None: older indexes)
    upper: float | None = None
    method: str | None = None  # "held-out": queries not in the index while measured; "leave-one-out"


@dataclass
class IndexInfo:
    """index.json: what the index holds and how to search it."""

    dim: int
    metric: str  # "ip" | "l2"
    factory: str  # the FAISS index_factory string the index was built from
    ntotal: int  # rows (FAISS labels 0..ntotal-1)
    column: str  # the embedding column the vectors came from
    embedding: EmbeddingInfo | None  # the source dataset's EmbeddingInfo (model fingerprint); None for foreign inputs
    search_params: dict[str, Any]  # FAISS ParameterSpace settings, e.g. {"nprobe": 16, "k_factor_rf": 8}
    recall: Recall | None
    qps: float | None  # batch queries per second at search_params, measured at build time
    memory_bytes: int  # size of the FAISS index in memory (the size of index.faiss)
    build_seconds: float
    created_at: str
    updated_at: str
    created_by: dict[str, Any]  # latent version and git commit
    normalized: bool = True  # vectors were unit-length (metric ip is then cosine)
    items_batch_rows: int = ITEMS_BATCH_ROWS
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per build/append
    files: dict[str, dict[str, Any]] | None = None  # name -> {"bytes", "sha256"}; None: written before checksums
    exact_qps: float | None = None  # exact search's batch throughput on the tune queries, for comparison
    format_version: int = SINGLE_FILE_FORMAT
    # format 2: the shards (pipeline.index.store.shards.ShardEntry as dicts: file, first, ntotal) in label order;
    # None: one index.faiss. storage: "memory" | "ondisk" (IVF lists in <shard>.ivfdata files)
    shards: list[dict[str, Any]] | None = None
    storage: str = "memory"
    shard_capacity: int | None = None  # rows a shard takes before append opens a new one
    # the filterable columns of items.arrow (pipeline.index.metadata.describe_items); None: older indexes
    metadata: dict[str, Any] | None = None
    # the keyword index (pipeline.index.keywords): kind, column, dir, rows, library, files; None: none
    text: dict[str, Any] | None = None

    def data_files(self) -> list[str]:
        """The files of the directory index.json records a checksum of: the FAISS index (or every shard file
        and its on-disk lists), items and ids."""
        keyword_files = [f"{self.text['dir']}/{name}" for name in self.text.get("files", [])] if self.text else []
        if not self.shards:
            return [*CHECKED_FILES, *keyword_files]
        names = [entry["file"] for entry in self.shards]
        if self.storage == ONDISK:  # every shard's inverted lists, in its .ivfdata file
            names += [lists_file(Path(name)).name for name in names]
        return [*names, ITEMS_FILE, IDS_FILE, *keyword_files]

    @property
    def faiss_metric(self) -> int:
        return METRICS[self.metric]

    def search_params_string(self) -> str:
        """``search_params`` as faiss.ParameterSpace takes them: ``"nprobe=16,k_factor_rf=8"``."""
        return ",".join(f"{key}={value}" for key, value in self.search_params.items())

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> IndexInfo:
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except ValueError as err:
            raise IndexCorrupted(f"{INFO_FILE} is not valid JSON ({err}); the index directory is damaged") from err
        check_format_version(data, FORMAT_VERSION, "index")
        if data.get("embedding") is not None:
            data["embedding"] = EmbeddingInfo(**data["embedding"])
        if data.get("recall") is not None:
            data["recall"] = Recall(**data["recall"])
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in data.items() if key in known})
