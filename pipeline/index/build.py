"""`latent index`: scan the input, choose the index, train on a sample, add in batches, tune, write.

Phases: read (the tune queries, then each candidate's training sample), train, add (stream every batch:
add it to the index, its rows to items.arrow, and merge it into the queries' exact neighbours), tune,
write. The tune queries are corpus rows held out of the index until it is tuned: they are fresh
queries, as the user's next one will be; they are added last, so every input row is indexed.
With ``index.factory=auto`` a candidate whose measured recall (the lower end of its 95% interval)
misses the target, or that is slower than exact search, gives way to the next one that fits the memory
budget (``choose.plan_candidates``); when none reaches it, nothing is written and the error says what
recall is reachable with how much memory. ``run_index`` is the command; ``build_index`` the library
(``append.append_index`` for ``index.mode=append``).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from pipeline.config import IndexCommandConfig, IndexMode
from pipeline.errors import LatentError
from pipeline.index import parallel, shards
from pipeline.index.choose import (
    Choice,
    build_bytes,
    choose_factory,
    estimate_index_bytes,
    exact_bytes,
    human,
    make_index,
    parse_memory,
    plan_candidates,
    train_rows,
)
from pipeline.index.gpu import coarse_quantizer_on, train
from pipeline.index.read import EmbeddingSource, iter_batches, read_rows, scan
from pipeline.index.store import (
    IDS_FILE,
    INDEX_FILE,
    ITEMS_FILE,
    METRICS,
    IndexInfo,
    ItemsWriter,
    Recall,
    StagedIndexDirectory,
    is_index_directory,
    write_id_map,
)
from pipeline.index.summary import Clock, IndexSummary, progress_bar, summarize
from pipeline.index.tune import GroundTruth, TuneResult, tune, without_self
from pipeline.runtime import RUNS_DIR, RunRecord, resolve_device

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
    from pipeline.index.append import append_index

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


# --- shared by create and append -----------------------------------------------------------------


def query_count(cfg: IndexCommandConfig, n: int) -> int:
    return int(min(cfg.index.tune_queries, max(1, n // 5)))  # small corpora: a fifth of the rows at most


def held_out_rows(n: int, queries: int, seed: int) -> np.ndarray:
    """The sorted rows held out of the index while tuning: the tune queries."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, queries), replace=False))


class Rows:
    """Driver-side bookkeeping of the add phase: item rows in label order and the ids for the id map."""

    def __init__(self, items: ItemsWriter) -> None:
        self.items = items
        self.ids: list[pa.ChunkedArray | pa.Array] = []

    def write(self, table: pa.Table) -> None:
        self.items.write(table)
        self.ids.append(table.column("id"))

    def all_ids(self) -> pa.ChunkedArray:
        return pa.chunked_array([c for ids in self.ids for c in getattr(ids, "chunks", [ids])], type=pa.string())


def finish(stage: StagedIndexDirectory, index: faiss.Index, ids: pa.ChunkedArray, info: IndexInfo) -> int:
    """Write the id map, the FAISS index and index.json (with every file's checksum); publish."""
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


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def created_by() -> dict[str, Any]:
    from pipeline.runtime import code_version

    return code_version()


def recall_of(result: TuneResult, cfg: IndexCommandConfig, queries: int, method: str) -> Recall:
    ic = cfg.index
    return Recall(
        ic.k, round(result.recall, 4), queries, ic.target_recall, round(result.lower, 4), round(result.upper, 4), method
    )


def new_info(
    source: EmbeddingSource,
    factory: str,
    dim: int,
    metric_name: str,
    index: faiss.Index,
    result: TuneResult,
    recall: Recall,
    seconds: float,
    exact_qps: float | None,
) -> IndexInfo:
    """The index.json of a newly built index (one file or shards)."""
    stamp = now()
    n = int(index.ntotal)
    return IndexInfo(
        dim=dim,
        metric=metric_name,
        factory=factory,
        ntotal=n,
        column=source.column,
        embedding=source.embedding,
        search_params=result.params,
        recall=recall,
        qps=round(result.qps, 1),
        memory_bytes=0,
        build_seconds=seconds,
        created_at=stamp,
        updated_at=stamp,
        created_by=created_by(),
        normalized=metric_name == "ip",
        history=[{"mode": "create", "at": stamp, "added": n, "skipped": 0, "seconds": seconds}],
        exact_qps=round(exact_qps, 1) if exact_qps else None,
    )


def tune_phase(cfg, clock, index, queries, truth_labels, own, valid=None, floor_qps=None) -> TuneResult:
    k = cfg.index.k
    truth = without_self(truth_labels, own, k, valid)
    with clock.phase("tune"), progress_bar(cfg.progress, "tune", unit="trial") as bar:
        return tune(
            index, queries, truth, own, k, cfg.index.target_recall, bar.update, valid=valid, floor_qps=floor_qps
        )


def recall_warning(result: TuneResult, cfg: IndexCommandConfig) -> list[str]:
    if result.reached:
        return []
    return [
        f"recall@{cfg.index.k} {result.recall:.4f} (95% lower bound {result.lower:.4f}) < target "
        f"{cfg.index.target_recall} even at {result.params}: use a larger index (index.max_memory, "
        f"index.factory) or a lower index.target_recall"
    ]


# --- create --------------------------------------------------------------------------------------


def _plan(cfg: IndexCommandConfig, source: EmbeddingSource, budget: int, metric: int, queries: int) -> list[Choice]:
    """The candidates to build, in order: auto's that fit the budget, or the one given."""
    n, dim = source.rows, source.dim
    ic = cfg.index
    if ic.factory.strip().lower() == "auto":
        fitting = plan_candidates(n, dim, budget, ic.target_recall, metric, ic.train_sample, ic.batch_size, queries)
        if not fitting:  # raises, saying how much the smallest candidate needs
            choose_factory(n, dim, budget, ic.target_recall, metric, ic.train_sample, ic.batch_size, queries)
        return fitting
    factory = ic.factory.strip()
    index_bytes = estimate_index_bytes(factory, n, dim, metric)  # also validates the string
    extra = build_bytes(n, dim, train_rows(factory, n, dim, metric, ic.train_sample), ic.batch_size, queries)
    if index_bytes + extra > budget:
        raise LatentError(
            f"index.max_memory={human(budget)} is too small for {factory} on {n} {dim}-d vectors "
            f"(~{human(index_bytes)} index + ~{human(extra)} while building); raise it or choose a smaller index"
        )
    return [Choice(factory, "given by index.factory", index_bytes, extra)]


@dataclass
class _Pass:
    """What the first add pass keeps for the others: exact neighbours, item rows and held-out items."""

    truth: GroundTruth
    rows: Rows
    held: list[pa.Table]
    writing: bool = True  # the first pass: write item rows, accumulate the exact neighbours
    ray_tasks: int = 0
    ray_nodes: list[str] | None = None


def _add(cfg, source, index, device, held_out, first: _Pass, metric_name: str, bar) -> faiss.Index:
    """One pass over the input: every row but the held-out ones added to ``index``; the first pass also
    writes item rows and accumulates the exact neighbours (``first``), later ones only add vectors."""
    ic = cfg.index
    use_ray = (
        cfg.parallel.min_vectors is not None
        and source.rows >= cfg.parallel.min_vectors
        and parallel.can_merge(index)
        and len(source.shards) > 1
    )
    if use_ray:
        truth = first.truth if first.writing else GroundTruth(first.truth.queries[:0], ic.k, index.metric_type)

        def on_group(items: pa.Table, held_items: pa.Table) -> None:
            if first.writing:
                first.rows.write(items)
                first.held.append(held_items)
            bar.update(items.num_rows + held_items.num_rows)

        filled, first.ray_tasks, first.ray_nodes = parallel.add_on_ray(
            index, source, cfg.ray, cfg.parallel.tasks, ic.batch_size, metric_name, truth, on_group, held_out
        )
        return filled
    label = 0
    with coarse_quantizer_on(index, device):
        for batch in iter_batches(source, ic.batch_size, metric=metric_name, items=first.writing):
            keep = parallel.held_out_mask(held_out, batch.first, len(batch.vectors))
            vectors = batch.vectors if keep.all() else np.ascontiguousarray(batch.vectors[keep])
            index.add(vectors)
            if first.writing:
                first.truth.add(vectors, np.arange(label, label + len(vectors)))
                first.rows.write(batch.items.filter(pa.array(keep)))
                first.held.append(batch.items.filter(pa.array(~keep)))
            label += len(vectors)
            bar.update(len(batch.vectors))
    return index


def build_index(cfg: IndexCommandConfig, source: EmbeddingSource, device: str, budget: int) -> IndexSummary:
    """A new index directory at ``cfg.index.path`` from every row of ``source``."""
    started = time.perf_counter()
    clock = Clock()
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
    n_queries = query_count(cfg, n)
    layout = shards.plan_layout(ic.shards, ic.storage.value, ic.factory, n, dim, metric, budget)
    if layout.split:  # shard files (format 2): pipeline.index.shard_build
        from pipeline.index.shard_build import build_sharded

        return build_sharded(cfg, source, device, layout, clock, started)
    plan = [layout.choice] if layout.choice else _plan(cfg, source, layout.budget, metric, n_queries)
    auto = ic.factory.strip().lower() == "auto"
    exact_fits = auto and any(c.factory == "Flat" for c in plan)
    query_at = held_out_rows(n, n_queries, ic.seed)
    with clock.phase("read"), progress_bar(cfg.progress, "read", total=len(query_at)) as bar:
        (queries,) = read_rows(source, [query_at], ic.batch_size, metric_name)
        bar.update(len(query_at))
    own = np.full(len(query_at), -1, dtype=np.int64)  # not in the index while it is tuned

    with StagedIndexDirectory(target) as stage:
        rows = Rows(ItemsWriter(stage.file(ITEMS_FILE), source.item_schema))
        first = _Pass(GroundTruth(queries, ic.k, metric), rows, [])
        tried: list[dict[str, Any]] = []
        for attempt, choice in enumerate(plan):
            index = make_index(choice.factory, dim, metric)
            if not index.is_trained:
                _train(cfg, clock, index, choice.factory, source, query_at, attempt, device, metric_name)
            with clock.phase("add"), progress_bar(cfg.progress, "add", total=n) as bar:
                index = _add(cfg, source, index, device, query_at, first, metric_name, bar)
            if attempt == 0:
                truth_labels, exact_qps = first.truth.labels(), first.truth.exact_qps
                first.writing = False
            floor = exact_qps if exact_fits and choice.factory != "Flat" else None
            result = tune_phase(cfg, clock, index, queries, truth_labels, own, floor_qps=floor)
            tried.append(_trial(choice, result, exact_qps))
            if result.reached or not auto:
                break
        else:
            raise _unreachable(cfg, tried, n, dim, metric, n_queries, exact_fits)

        index.add(queries)  # the held-out rows, last: every input row is indexed
        for held in first.held:
            rows.write(held)
        rows.items.close()
        if index.ntotal != n:
            raise RuntimeError(f"added {index.ntotal} vectors, expected {n}")
        seconds = round(time.perf_counter() - started, 2)
        recall = recall_of(result, cfg, len(queries), "held-out")
        info = new_info(source, choice.factory, dim, metric_name, index, result, recall, seconds, exact_qps)
        with clock.phase("write"):
            memory = finish(stage, index, rows.all_ids(), info)

    return summarize(
        info,
        path=str(target),
        mode=ic.mode.value,
        reason=_reason(choice, tried, auto),
        device=device,
        input_rows=n,
        added=n,
        skipped=0,
        clock=clock,
        started=started,
        memory_bytes=memory,
        warnings=[w for w in (choice.warning,) if w and not result.reached] + recall_warning(result, cfg),
        ray_tasks=first.ray_tasks,
        ray_nodes=first.ray_nodes or [],
        tried=tried,
    )


def _train(cfg, clock, index, factory: str, source, held_out, attempt: int, device: str, metric_name: str) -> None:
    """Read a training sample (rows other than the held-out ones), train ``index`` on it, free it."""
    ic = cfg.index
    n = source.rows
    want = train_rows(factory, n, source.dim, index.metric_type, ic.train_sample)
    rng = np.random.default_rng([ic.seed, attempt + 1])
    picked = rng.choice(n, size=min(n, want + len(held_out)), replace=False)
    picked = np.sort(picked[parallel.held_out_mask(held_out, 0, n)[picked]][:want])
    with clock.phase("read"), progress_bar(cfg.progress, "read", total=len(picked)) as bar:
        (sample,) = read_rows(source, [picked], ic.batch_size, metric_name)
        bar.update(len(picked))
    with clock.phase("train"), progress_bar(cfg.progress, "train", total=len(sample)) as bar:
        train(index, sample, device)
        bar.update(len(sample))


def _trial(choice: Choice, result: TuneResult, exact_qps: float | None) -> dict[str, Any]:
    """One candidate auto built: its measured recall, speed, and why it was kept or left."""
    if result.reached:
        outcome = f"recall {result.recall:.4f} (95% lower bound {result.lower:.4f}) at {result.qps:.0f} queries/s"
    elif result.slower_than:
        outcome = (
            f"slower than exact search ({exact_qps:.0f} queries/s) before reaching the target "
            f"(best {result.recall:.4f} at {result.params})"
        )
    else:
        outcome = f"recall {result.recall:.4f} (95% lower bound {result.lower:.4f}) at most, even at {result.params}"
    return {
        "factory": choice.factory,
        "estimated_bytes": choice.index_bytes + choice.build_bytes,
        "params": result.params,
        "recall": round(result.recall, 4),
        "lower": round(result.lower, 4),
        "qps": round(result.qps, 1),
        "reached": result.reached,
        "outcome": outcome,
    }


def _reason(choice: Choice, tried: list[dict[str, Any]], auto: bool) -> str:
    if not auto or len(tried) == 1:
        return choice.reason
    left = ", ".join(t["factory"] for t in tried[:-1])
    if choice.factory == "Flat":
        return f"exact search: no index that fits beat it at the target recall (tried {left})"
    return f"{choice.reason}; after {left} missed the target"


def _unreachable(cfg, tried, n: int, dim: int, metric: int, queries: int, exact_fits: bool) -> LatentError:
    """Nothing auto could build within the budget reaches the target: say what is reachable, and with what."""
    ic = cfg.index
    best = max(tried, key=lambda t: t["lower"])
    lines = "; ".join(f"{t['factory']} (~{human(t['estimated_bytes'])}): {t['outcome']}" for t in tried)
    need = exact_bytes(n, dim, metric, ic.batch_size, queries)
    exact = "" if exact_fits else f"; exact search (Flat, recall 1.0) needs ~{human(need)}: raise index.max_memory"
    return LatentError(
        f"index.factory=auto: no index within index.max_memory={ic.max_memory} reaches recall@{ic.k} "
        f"{ic.target_recall} on this data (the lower end of its 95% interval over {queries} held-out queries). "
        f"Reachable: {best['recall']:.4f} (lower bound {best['lower']:.4f}) with {best['factory']} "
        f"(~{human(best['estimated_bytes'])}){exact}, or lower index.target_recall. Tried: {lines}. "
        "Nothing was written."
    )
