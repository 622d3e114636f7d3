"""`latent index`: scan the input, choose the index, train on a sample, add in batches, tune, write.

Phases: read (the tune queries, then each candidate's training sample), train, add (stream every batch:
add it to the index, its rows to items.arrow, and merge it into the queries' exact neighbours), tune,
write. The tune queries are corpus rows held out of the index until it is tuned: they are fresh
queries, as the user's next one will be; they are added last, so every input row is indexed.
With ``index.factory=auto`` a candidate whose measured recall (the lower end of its 95% interval)
misses the target, or that is slower than exact search, gives way to the next one that fits the memory
budget (``choose.plan_candidates``); when none reaches it, nothing is written and the error says what
recall is reachable with how much memory. ``run_index`` is the command; ``build_index`` the library
(``append.append_index`` for ``index.mode=append``, ``sharded.build_sharded`` for shard files); the steps
they share live in ``steps``, the add loop in ``add.fill``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from pipeline.config import IndexCommandConfig, IndexMode
from pipeline.errors import LatentError
from pipeline.index import keywords
from pipeline.index.builder import parallel
from pipeline.index.builder.add import fill
from pipeline.index.builder.gpu import coarse_quantizer_on
from pipeline.index.builder.steps import (
    Rows,
    created_summary,
    describe_trial,
    explain_unreachable,
    finish,
    new_info,
    plan_choices,
    query_count,
    read_tune_queries,
    recall_of,
    train_on_sample,
    tune_phase,
)
from pipeline.index.builder.summary import Clock, IndexSummary, progress_bar
from pipeline.index.input.embeddings import EmbeddingSource
from pipeline.index.input.read import scan
from pipeline.index.plan.choose import (
    Choice,
    make_index,
    parse_memory,
)
from pipeline.index.plan.shard_layout import plan_layout
from pipeline.index.recall import GroundTruth
from pipeline.index.store.directory import ItemsWriter, StagedIndexDirectory, is_index_directory
from pipeline.index.store.format import ITEMS_FILE, METRICS
from pipeline.io.publish import hold_target, refuse_output_inside_inputs
from pipeline.runtime import RunRecord, resolve_device

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
    from pipeline.index.builder.append import append_index

    _check_config(cfg)
    device = resolve_device(cfg.index.device, faiss.get_num_gpus(), key="index.device")
    budget = parse_memory(cfg.index.max_memory)
    refuse_output_inside_inputs({"index.path": cfg.index.path}, {"input.path": cfg.input.path})
    with hold_target(Path(cfg.index.path), "index.path"):  # up to the publish: a second writer is refused
        source = scan(cfg.input.path, cfg.input.column)
        if cfg.index.mode == IndexMode.append:
            summary = append_index(cfg, source, device, budget)
        else:
            summary = build_index(cfg, source, device, budget)
        # the run's record lives in the published index directory (older runs' records are carried over)
        RunRecord.start(cfg.index.path, cfg).finish(asdict(summary))
    print(summary.text())
    return summary


# --- create --------------------------------------------------------------------------------------


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
        and len(source.files) > 1
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
    truth = first.truth if first.writing else None
    with coarse_quantizer_on(index, device):
        batches = fill(index, source, ic.batch_size, metric_name, truth, held_out=held_out, items=first.writing)
        for kept, held, n in batches:
            if first.writing:
                first.rows.write(kept)
                first.held.append(held)
            bar.update(n)
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
    layout = plan_layout(ic.shards, ic.storage.value, ic.factory, n, dim, metric, budget)
    if layout.split:  # shard files (format 2): pipeline.index.builder.sharded
        from pipeline.index.builder.sharded import build_sharded

        return build_sharded(cfg, source, device, layout, clock, started)
    plan = [layout.choice] if layout.choice else plan_choices(cfg, source, layout.budget, metric, n_queries)
    auto = ic.factory.strip().lower() == "auto"
    exact_fits = auto and any(c.factory == "Flat" for c in plan)
    query_at, queries = read_tune_queries(cfg, clock, source, metric_name)
    own = np.full(len(query_at), -1, dtype=np.int64)  # not in the index while it is tuned

    with StagedIndexDirectory(target) as stage:
        rows = Rows(ItemsWriter(stage.file(ITEMS_FILE), source.item_schema))
        first = _Pass(GroundTruth(queries, ic.k, metric), rows, [])
        tried: list[dict[str, Any]] = []
        for attempt, choice in enumerate(plan):
            index = make_index(choice.factory, dim, metric)
            if not index.is_trained:
                train_on_sample(cfg, clock, index, choice.factory, source, query_at, attempt, device, metric_name)
            with clock.phase("add"), progress_bar(cfg.progress, "add", total=n) as bar:
                index = _add(cfg, source, index, device, query_at, first, metric_name, bar)
            if attempt == 0:
                truth_labels, exact_qps = first.truth.labels(), first.truth.exact_qps
                first.writing = False
            floor = exact_qps if exact_fits and choice.factory != "Flat" else None
            result = tune_phase(cfg, clock, index, queries, truth_labels, own, floor_qps=floor)
            tried.append(describe_trial(choice, result, exact_qps))
            if result.reached or not auto:
                break
        else:
            raise explain_unreachable(cfg, tried, n, dim, metric, n_queries, exact_fits)

        index.add(queries)  # the held-out rows, last: every input row is indexed
        for held in first.held:
            rows.write(held)
        rows.items.close()
        if index.ntotal != n:
            raise RuntimeError(f"added {index.ntotal} vectors, expected {n}")
        seconds = round(time.perf_counter() - started, 2)
        recall = recall_of(result, cfg, len(queries), "held-out")
        info = new_info(source, choice.factory, dim, metric_name, index, result, recall, seconds, exact_qps)
        info.text = keywords.requested(cfg.index.text, source.item_schema.names)
        with clock.phase("write"):
            memory = finish(stage, index, rows.all_ids(), info)

    return created_summary(
        info,
        cfg,
        choice,
        result,
        reason=_reason(choice, tried, auto),
        device=device,
        clock=clock,
        started=started,
        memory_bytes=memory,
        ray_tasks=first.ray_tasks,
        ray_nodes=first.ray_nodes or [],
        tried=tried,
    )


def _reason(choice: Choice, tried: list[dict[str, Any]], auto: bool) -> str:
    if not auto or len(tried) == 1:
        return choice.reason
    left = ", ".join(t["factory"] for t in tried[:-1])
    if choice.factory == "Flat":
        return f"exact search: no index that fits beat it at the target recall (tried {left})"
    return f"{choice.reason}; after {left} missed the target"
