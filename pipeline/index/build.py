"""`latent index`: scan the input, choose the index, train on a sample, add in batches, tune, write.

Phases: read (the training sample and the tune queries), train, add (stream every batch once: add it
to the index, its rows to items.arrow, and merge it into the queries' exact neighbours), tune, write.
Vectors are held only batch by batch, never twice; the training sample is freed before the add.
``run_index`` is the command; ``build_index`` and ``append_index`` are the library.
"""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from pipeline.config import IndexCommandConfig, IndexMode
from pipeline.errors import LatentError
from pipeline.index import parallel, shards
from pipeline.index.choose import (
    Choice,
    build_bytes,
    choose_factory,
    estimate_index_bytes,
    human,
    make_index,
    parse_memory,
    train_rows,
)
from pipeline.index.read import EmbeddingSource, iter_batches, read_rows, scan
from pipeline.index.store import (
    IDS_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    METRICS,
    IndexDirectory,
    IndexInfo,
    ItemsWriter,
    Recall,
    StagedIndexDirectory,
    is_index_directory,
    write_id_map,
)
from pipeline.index.tune import GroundTruth, TuneResult, tune, without_self
from pipeline.runtime import RUNS_DIR, RunRecord, resolve_device


@dataclass
class IndexSummary:
    """What a run did; printed at the end and returned."""

    path: str
    mode: str
    factory: str
    reason: str
    device: str
    input_rows: int
    added: int
    skipped: int
    ntotal: int
    dim: int
    metric: str
    search_params: dict[str, Any]
    recall: Recall | None
    qps: float | None
    memory_bytes: int
    seconds: float
    phases: dict[str, float] = field(default_factory=dict)
    ray_tasks: int = 0
    ray_nodes: list[str] = field(default_factory=list)  # ids of the Ray nodes that ran add tasks
    peak_rss_bytes: int = 0
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        recall = (
            f"recall@{self.recall.k} {self.recall.value:.4f} (target {self.recall.target}, {self.recall.queries} "
            f"queries)"
            if self.recall
            else "recall not measured"
        )
        phases = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.phases.items())
        lines = [
            f"latent index: {self.mode} {self.path}",
            f"  index     {self.factory}  ({self.reason})",
            f"  vectors   {self.ntotal} x {self.dim} ({self.metric}); added {self.added}, skipped {self.skipped}",
            f"  search    {self.search_params or '{}'}: {recall}, {self.qps or 0:.0f} queries/s (batch)",
            f"  memory    index {human(self.memory_bytes)}, peak RSS {human(self.peak_rss_bytes)}",
            f"  time      {self.seconds:.1f}s on {self.device}"
            + (f", add on {self.ray_tasks} Ray tasks across {len(self.ray_nodes)} node(s)" if self.ray_tasks else "")
            + f" ({phases})",
        ]
        lines += [f"  warning   {w}" for w in self.warnings]
        return "\n".join(lines)


# --- the edge ------------------------------------------------------------------------------------


def _check_config(cfg: IndexCommandConfig) -> None:
    ic = cfg.index
    if not 0 < ic.target_recall <= 1:
        raise LatentError(f"index.target_recall={ic.target_recall}: must be in (0, 1]")
    for key in ("k", "batch_size", "tune_queries", "train_sample"):
        if getattr(ic, key) < 1:
            raise LatentError(f"index.{key}={getattr(ic, key)}: must be at least 1")


def run_index(cfg: IndexCommandConfig) -> IndexSummary:
    """The `latent index` command: build (or append to) the index directory at ``cfg.index.path``."""
    _check_config(cfg)
    device = resolve_device(cfg.index.device, faiss.get_num_gpus(), key="index.device")
    budget = parse_memory(cfg.index.max_memory)
    source = scan(cfg.input.path, cfg.input.column)
    if cfg.index.mode == IndexMode.append:
        summary = append_index(cfg, source, device, budget)
    else:
        summary = build_index(cfg, source, device, budget)
    # the run's record lives in the published index directory (older runs' records are carried over)
    RunRecord.start(cfg.index.path, cfg).finish(asdict(summary))
    print(summary.text())
    return summary


# --- phases --------------------------------------------------------------------------------------


def _bar(cfg: IndexCommandConfig, desc: str, total: int | None = None, unit: str = "vec") -> tqdm:
    return tqdm(total=total, desc=f"{desc:<5}", unit=unit, unit_scale=True, disable=not cfg.progress, file=sys.stderr)


class _Clock:
    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.phases[name] = self.phases.get(name, 0.0) + time.perf_counter() - start


def _sample(n: int, train: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted row samples: (training rows, held-out query rows)."""
    rng = np.random.default_rng(seed)
    picked = rng.choice(n, size=min(n, train + queries), replace=False)
    return np.sort(picked[queries:]), np.sort(picked[:queries])


def _query_count(cfg: IndexCommandConfig, n: int) -> int:
    return int(min(cfg.index.tune_queries, max(1, n // 5)))  # small corpora: a fifth of the rows at most


def _plan(cfg: IndexCommandConfig, source: EmbeddingSource, budget: int, metric: int, queries: int) -> Choice:
    n, dim = source.rows, source.dim
    ic = cfg.index
    if ic.factory.strip().lower() == "auto":
        return choose_factory(n, dim, budget, ic.target_recall, metric, ic.train_sample, ic.batch_size, queries)
    factory = ic.factory.strip()
    index_bytes = estimate_index_bytes(factory, n, dim, metric)  # also validates the string
    extra = build_bytes(n, dim, train_rows(factory, n, dim, metric, ic.train_sample), ic.batch_size, queries)
    if index_bytes + extra > budget:
        raise LatentError(
            f"index.max_memory={human(budget)} is too small for {factory} on {n} {dim}-d vectors "
            f"(~{human(index_bytes)} index + ~{human(extra)} while building); raise it or choose a smaller index"
        )
    return Choice(factory, "given by index.factory", index_bytes, extra)


def _opq_matrices(index: faiss.Index) -> list[faiss.OPQMatrix]:
    node = faiss.downcast_index(index)
    if isinstance(node, faiss.IndexRefine):
        node = faiss.downcast_index(node.base_index)
    if not isinstance(node, faiss.IndexPreTransform):
        return []
    chain = [faiss.downcast_VectorTransform(node.chain.at(i)) for i in range(node.chain.size())]
    return [t for t in chain if isinstance(t, faiss.OPQMatrix)]


def train(index: faiss.Index, sample: np.ndarray, device: str) -> None:
    """Train ``index`` on ``sample``; on a GPU, the coarse k-means runs there (the index stays on the CPU)."""
    keep = []  # FAISS holds raw pointers to these during training
    ivf = faiss.try_extract_index_ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    for opq in _opq_matrices(index):
        if pq is not None and pq.nbits == 4:  # OPQ trains for 8-bit codes by default: 16x slower, wrong target
            keep.append(faiss.ProductQuantizer(opq.d_out, opq.M, 4))
            opq.pq = keep[-1]
    if device == "cuda" and ivf is not None:
        keep.append(faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type)))
        ivf.clustering_index = keep[-1]
    try:
        index.train(sample)
    finally:
        if ivf is not None:
            ivf.clustering_index = None
        for opq in _opq_matrices(index):
            opq.pq = None


@contextmanager
def coarse_quantizer_on(index: faiss.Index, device: str) -> Iterator[None]:
    """While adding on a GPU, assign vectors to inverted lists there (the costly part of an IVF add)."""
    ivf = faiss.try_extract_index_ivf(index)
    if device != "cuda" or ivf is None or not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        yield  # graph quantizers (IVF..._HNSW) have no GPU form: they assign on the CPU
        return
    cpu_quantizer = ivf.quantizer
    gpu_quantizer = faiss.index_cpu_to_all_gpus(cpu_quantizer)
    ivf.quantizer = gpu_quantizer
    try:
        yield
    finally:
        ivf.quantizer = cpu_quantizer  # the index written to disk references only CPU objects
        del gpu_quantizer


class _Rows:
    """Driver-side bookkeeping of the add phase: item rows in label order and the ids for the id map."""

    def __init__(self, items: ItemsWriter) -> None:
        self.items = items
        self.ids: list[pa.ChunkedArray | pa.Array] = []

    def write(self, table: pa.Table) -> None:
        self.items.write(table)
        self.ids.append(table.column("id"))

    def all_ids(self) -> pa.ChunkedArray:
        return pa.chunked_array([c for ids in self.ids for c in getattr(ids, "chunks", [ids])], type=pa.string())


def _finish(
    stage: StagedIndexDirectory,
    index: faiss.Index,
    ids: pa.ChunkedArray,
    info: IndexInfo,
) -> int:
    write_id_map(stage.file(IDS_FILE), ids)
    if info.shards:  # the shard files are in the staging directory already
        info.memory_bytes = shards.files_bytes(stage.dir, info)
    else:
        faiss.write_index(index, str(stage.file(INDEX_FILE)))
        info.memory_bytes = os.path.getsize(stage.file(INDEX_FILE))
    stage.write_info(info)
    previous_runs = stage.target / RUNS_DIR
    if previous_runs.is_dir():  # the run records of the index being replaced or appended to
        shutil.copytree(previous_runs, stage.file(RUNS_DIR))
    stage.commit()
    return info.memory_bytes


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _peak_rss() -> int:
    """This process's peak resident memory: VmHWM on Linux (ru_maxrss also counts the image of the parent
    this process was forked from), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _tune(cfg, clock, index, queries, truth_labels, own, valid=None) -> TuneResult:
    k = cfg.index.k
    truth = without_self(truth_labels, own, k, valid)
    with clock.phase("tune"), _bar(cfg, "tune", unit="trial") as bar:
        result = tune(index, queries, truth, own, k, cfg.index.target_recall, progress=bar.update, valid=valid)
    return result


def _warn_recall(result: TuneResult, cfg: IndexCommandConfig) -> list[str]:
    if result.reached:
        return []
    return [
        f"recall@{cfg.index.k} {result.recall:.4f} < target {cfg.index.target_recall} even at {result.params}: "
        f"use a larger index (index.max_memory, index.factory) or a lower index.target_recall"
    ]


# --- create --------------------------------------------------------------------------------------


def build_index(cfg: IndexCommandConfig, source: EmbeddingSource, device: str, budget: int) -> IndexSummary:
    """A new index directory at ``cfg.index.path`` from every row of ``source``."""
    start = time.perf_counter()
    clock = _Clock()
    ic = cfg.index
    target = Path(ic.path)
    if ic.mode == IndexMode.create and target.exists() and (is_index_directory(target) or any(target.iterdir())):
        raise LatentError(
            f"index.path={target} already exists; use index.mode=append to add to it, or index.mode=overwrite "
            f"to replace it"
        )
    metric_name = ic.metric.value
    metric = METRICS[metric_name]
    if metric_name == "ip" and source.embedding is not None and not source.embedding.normalized:
        raise LatentError("the dataset's vectors are not normalised (normalized: false); metric ip needs unit vectors")
    n, dim = source.rows, source.dim
    n_queries = _query_count(cfg, n)
    layout = shards.plan_layout(ic.shards, ic.storage.value, ic.factory, n, dim, metric, budget)
    choice = layout.choice or _plan(cfg, source, layout.budget, metric, n_queries)
    index = make_index(choice.factory, dim, metric)
    shards.check_layout(index, choice.factory, layout)
    n_train = train_rows(choice.factory, n, dim, metric, ic.train_sample) if not index.is_trained else 0
    train_at, query_at = _sample(n, n_train, n_queries, ic.seed)

    with StagedIndexDirectory(target) as stage:
        with clock.phase("read"), _bar(cfg, "read", total=len(train_at) + len(query_at)) as bar:
            sample, queries = read_rows(source, [train_at, query_at], ic.batch_size, metric_name)
            bar.update(len(train_at) + len(query_at))
            sample = sample if n_train else None
        if sample is not None:
            with clock.phase("train"), _bar(cfg, "train", total=len(sample)) as bar:
                train(index, sample, device)
                bar.update(len(sample))
            del sample

        truth = GroundTruth(queries, ic.k, metric)
        rows_out = _Rows(ItemsWriter(stage.file(ITEMS_FILE), source.item_schema))
        ray_tasks, ray_nodes = 0, []
        use_ray = (
            cfg.parallel.min_vectors is not None
            and n >= cfg.parallel.min_vectors
            and parallel.can_merge(index)
            and len(source.shards) > 1
        )
        entries: list[shards.ShardEntry] = []
        with clock.phase("add"), _bar(cfg, "add", total=n) as bar:
            if layout.split:  # one Ray task per shard, each writes its shard file into the staging directory

                def on_shard(items: pa.Table) -> None:
                    rows_out.write(items)
                    bar.update(items.num_rows)

                entries, _, ray_nodes = shards.add_shards(
                    index, source, layout.count, stage.dir, layout.storage, cfg.ray, ic.batch_size, metric_name,
                    truth, on_shard, use_ray=cfg.parallel.min_vectors is not None,
                )  # fmt: skip
                ray_tasks = layout.count if cfg.parallel.min_vectors is not None else 0
                index = shards.open_shards(stage.dir, entries, dim)
            elif use_ray:

                def on_group(items: pa.Table, first: int) -> None:
                    rows_out.write(items)
                    bar.update(items.num_rows)

                index, ray_tasks, ray_nodes = parallel.add_on_ray(
                    index, source, cfg.ray, cfg.parallel.tasks, ic.batch_size, metric_name, truth, on_group
                )
            else:
                with coarse_quantizer_on(index, device):
                    for batch in iter_batches(source, ic.batch_size, metric=metric_name):
                        index.add(batch.vectors)
                        truth.add(batch.vectors, np.arange(batch.first, batch.first + len(batch.vectors)))
                        rows_out.write(batch.items)
                        bar.update(len(batch.vectors))
        rows_out.items.close()
        if index.ntotal != n:
            raise RuntimeError(f"added {index.ntotal} vectors, expected {n}")

        result = _tune(cfg, clock, index, queries, truth.labels(), query_at)
        now = _now()
        seconds = time.perf_counter() - start
        info = IndexInfo(
            dim=dim,
            metric=metric_name,
            factory=choice.factory,
            ntotal=int(index.ntotal),
            column=source.column,
            embedding=source.embedding,
            search_params=result.params,
            recall=Recall(ic.k, round(result.recall, 4), len(queries), ic.target_recall),
            qps=round(result.qps, 1),
            memory_bytes=0,
            build_seconds=round(seconds, 2),
            created_at=now,
            updated_at=now,
            created_by=_created_by(),
            normalized=metric_name == "ip",
            history=[{"mode": "create", "at": now, "added": n, "skipped": 0, "seconds": round(seconds, 2)}],
        )
        if layout.split:
            shards.describe(info, entries, layout.storage, -(-n // layout.count))
        with clock.phase("write"):
            memory = _finish(stage, index, rows_out.all_ids(), info)

    return IndexSummary(
        path=str(target),
        mode=ic.mode.value,
        factory=choice.factory,
        reason=choice.reason,
        device=device,
        input_rows=n,
        added=n,
        skipped=0,
        ntotal=int(index.ntotal),
        dim=dim,
        metric=metric_name,
        search_params=result.params,
        recall=info.recall,
        qps=info.qps,
        memory_bytes=memory,
        seconds=round(time.perf_counter() - start, 2),
        phases={k: round(v, 2) for k, v in clock.phases.items()},
        ray_tasks=ray_tasks,
        ray_nodes=ray_nodes,
        peak_rss_bytes=_peak_rss(),
        warnings=[w for w in (choice.warning,) if w] + _warn_recall(result, cfg),
    )


def _created_by() -> dict[str, Any]:
    from pipeline.runtime import code_version

    return code_version()


# --- append --------------------------------------------------------------------------------------


def _check_append(existing: IndexInfo, source: EmbeddingSource, cfg: IndexCommandConfig) -> None:
    ic = cfg.index
    if source.dim != existing.dim:
        raise LatentError(f"mixed dimensions: the index holds {existing.dim}-d vectors, the input {source.dim}-d")
    if ic.metric.value != existing.metric:
        raise LatentError(f"index.metric={ic.metric.value}, but the index was built with metric {existing.metric}")
    factory = ic.factory.strip()
    if factory.lower() != "auto" and factory != existing.factory:
        raise LatentError(
            f"index.factory={factory}: append keeps the index's own factory ({existing.factory}); "
            f"use index.mode=overwrite to rebuild"
        )
    if (existing.embedding is None) != (source.embedding is None):
        raise LatentError(
            "mixed inputs: the index was built from "
            + ("an embedding dataset with a model fingerprint" if existing.embedding else "vectors without one")
            + " and the input is "
            + ("one with" if source.embedding else "one without")
        )
    if existing.embedding is not None and source.embedding is not None:
        problems = existing.embedding.compatible_with(source.embedding)
        if problems:
            raise LatentError(f"mixed models: the input differs from the index's: {'; '.join(problems)}")


def append_index(cfg: IndexCommandConfig, source: EmbeddingSource, device: str, budget: int) -> IndexSummary:
    """Add the input's rows whose ids the index at ``cfg.index.path`` lacks, without retraining."""
    start = time.perf_counter()
    clock = _Clock()
    ic = cfg.index
    target = Path(ic.path)
    if not is_index_directory(target):
        raise LatentError(f"index.mode=append: no index at {target} (build one with index.mode=create)")
    existing = IndexDirectory.open(target, mmap=False)  # read into memory: FAISS adds to it
    old = existing.info
    _check_append(old, source, cfg)
    # at least this many rows once appended (more if the input's rows are all new): refuse what cannot fit
    at_least = max(old.ntotal, source.rows)
    need = estimate_index_bytes(old.factory, at_least, old.dim, old.faiss_metric) + build_bytes(
        at_least, old.dim, 0, ic.batch_size, _query_count(cfg, source.rows)
    )
    if need > budget:
        raise LatentError(
            f"index.max_memory={human(budget)} is too small to append to {old.factory} with {at_least}+ vectors "
            f"(~{human(need)}); raise index.max_memory"
        )
    metric_name = old.metric
    index = existing.index
    appender = shards.appender_for(existing)  # a sharded index: new rows go to its last shard, then new ones
    if appender is not None:
        index = appender
    id_map = existing.id_map()
    known, known_labels = id_map.column("id"), id_map.column("label").to_numpy()
    n_in = source.rows
    _, query_at = _sample(n_in, 0, _query_count(cfg, n_in), ic.seed)
    with clock.phase("read"), _bar(cfg, "read", total=len(query_at)) as bar:
        (queries,) = read_rows(source, [query_at], ic.batch_size, metric_name)
        bar.update(len(query_at))

    truth = GroundTruth(queries, ic.k, old.faiss_metric)
    own = np.full(len(query_at), -1, dtype=np.int64)
    seen = np.zeros(old.ntotal, dtype=bool)  # old rows present in this input (the truth covers them)
    added = skipped = 0
    with StagedIndexDirectory(target) as stage:
        rows_out = _Rows(ItemsWriter(stage.file(ITEMS_FILE), existing.item_schema))
        with clock.phase("add"), _bar(cfg, "add", total=n_in) as bar:
            for old_rows in existing.item_batches():  # the old rows first, as they were
                rows_out.write(pa.Table.from_batches([old_rows]))
            with coarse_quantizer_on(existing.index if appender is None else appender.parts[-1], device):
                for batch in iter_batches(source, ic.batch_size, metric=metric_name):
                    position = pc.index_in(batch.items.column("id"), value_set=known)  # null: a new id
                    is_old = pc.is_valid(position).to_numpy(zero_copy_only=False)
                    labels = np.where(is_old, known_labels[pc.fill_null(position, 0).to_numpy()], -1)
                    fresh = np.flatnonzero(~is_old)
                    labels[fresh] = index.ntotal + np.arange(len(fresh))
                    if len(fresh):
                        index.add(np.ascontiguousarray(batch.vectors[fresh]))
                        rows_out.write(batch.items.take(pa.array(fresh)))
                    seen[labels[is_old]] = True
                    truth.add(batch.vectors, labels)
                    lo, hi = np.searchsorted(query_at, [batch.first, batch.first + len(batch.vectors)])
                    own[lo:hi] = labels[query_at[lo:hi] - batch.first]
                    added += len(fresh)
                    skipped += len(batch.vectors) - len(fresh)
                    bar.update(len(batch.vectors))
        rows_out.items.close()
        if added == 0:  # nothing new: the index stays exactly as it was (the staging directory is dropped)
            return IndexSummary(
                path=str(target),
                mode="append",
                factory=old.factory,
                reason="nothing new to add",
                device=device,
                input_rows=n_in,
                added=0,
                skipped=skipped,
                ntotal=old.ntotal,
                dim=old.dim,
                metric=metric_name,
                search_params=old.search_params,
                recall=old.recall,
                qps=old.qps,
                memory_bytes=old.memory_bytes,
                seconds=round(time.perf_counter() - start, 2),
                phases={k: round(v, 2) for k, v in clock.phases.items()},
                peak_rss_bytes=_peak_rss(),
            )
        if appender is not None:
            index = appender.joined()
        covered = bool(seen.all())
        valid = None if covered else np.concatenate([seen, np.ones(index.ntotal - old.ntotal, dtype=bool)])
        result = _tune(cfg, clock, index, queries, truth.labels(), own, valid)
        now = _now()
        seconds = time.perf_counter() - start
        history = [
            *old.history,
            {"mode": "append", "at": now, "added": added, "skipped": skipped, "seconds": round(seconds, 2)},
        ]
        info = IndexInfo(
            **{
                **asdict(old),
                "embedding": old.embedding,
                "ntotal": int(index.ntotal),
                "search_params": result.params,
                "recall": Recall(ic.k, round(result.recall, 4), len(queries), ic.target_recall),
                "qps": round(result.qps, 1),
                "build_seconds": round(old.build_seconds + seconds, 2),
                "updated_at": now,
                "history": history,
            }
        )
        if appender is not None:
            entries, _ = appender.write(stage.dir, old.storage)
            shards.describe(info, entries, old.storage, appender.capacity)
        with clock.phase("write"):
            memory = _finish(stage, index, rows_out.all_ids(), info)

    warnings = _warn_recall(result, cfg)
    if not covered:
        warnings.append(
            f"the input holds {int(seen.sum())} of the index's {old.ntotal} earlier rows: recall was measured "
            f"over the rows of this input only"
        )
    return IndexSummary(
        path=str(target),
        mode="append",
        factory=old.factory,
        reason="appended without retraining",
        device=device,
        input_rows=n_in,
        added=added,
        skipped=skipped,
        ntotal=int(index.ntotal),
        dim=old.dim,
        metric=metric_name,
        search_params=result.params,
        recall=info.recall,
        qps=info.qps,
        memory_bytes=memory,
        seconds=round(time.perf_counter() - start, 2),
        phases={k: round(v, 2) for k, v in clock.phases.items()},
        peak_rss_bytes=_peak_rss(),
        warnings=warnings,
    )
