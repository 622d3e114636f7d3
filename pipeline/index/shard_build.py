"""`latent index` for a sharded or on-disk index (``index.shards`` > 1 or ``index.storage=ondisk``).

The create path of ``build.build_index`` when the directory holds shard files (index.json format 2):
one trained index, copied into every shard and filled by ``shards.add_shards`` (a Ray task per shard),
tuned on the joined shards, published by ``steps.finish``. Unlike the one-file build, the tune queries
stay in the index (labels follow the input's row order, which the shard ranges need) and are left out
of their own answers (leave-one-out), as append measures; auto tries the candidates of
``shard_layout.auto_factories`` in order until one reaches the target recall (or the last one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from pipeline.config import IndexCommandConfig
from pipeline.index import keywords, shards
from pipeline.index.choose import Choice, make_index
from pipeline.index.embeddings import EmbeddingSource
from pipeline.index.shard_layout import Layout, check_layout
from pipeline.index.steps import (
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
from pipeline.index.store import ITEMS_FILE, METRICS, ItemsWriter, StagedIndexDirectory
from pipeline.index.summary import Clock, IndexSummary, progress_bar
from pipeline.index.tune import GroundTruth

log = logging.getLogger(__name__)


def build_sharded(
    cfg: IndexCommandConfig, source: EmbeddingSource, device: str, layout: Layout, clock: Clock, started: float
) -> IndexSummary:
    """A new sharded (or on-disk) index directory at ``cfg.index.path`` from every row of ``source``.

    ``index.factory=auto`` keeps its promise as the one-file build does: a candidate whose tuned recall
    falls short of the target is discarded (never published) and the next one that fits is built; when
    none reaches it, nothing is written and the error says what recall is reachable."""
    ic = cfg.index
    n_queries = query_count(cfg, source.rows)
    metric = METRICS[ic.metric.value]
    auto = layout.choice is not None
    given = None if auto else plan_choices(cfg, source, layout.budget, metric, n_queries)[0]
    candidates = [layout.choice, *layout.fallbacks] if auto else [given]
    query_at, queries = read_tune_queries(cfg, clock, source, ic.metric.value)
    tried: list[dict] = []
    for attempt, choice in enumerate(candidates):
        if attempt:
            choice = replace(choice, reason=f"{choice.reason} (after {candidates[attempt - 1].factory} fell short)")
        summary, trial = _build_candidate(cfg, source, device, layout, choice, queries, query_at, clock, started, auto)
        tried.append(trial)
        if summary is not None:
            summary.tried = tried
            return summary
    exact_fits = any(c.factory == "Flat" for c in candidates)
    raise explain_unreachable(cfg, tried, source.rows, source.dim, metric, n_queries, exact_fits)


def _build_candidate(
    cfg: IndexCommandConfig,
    source: EmbeddingSource,
    device: str,
    layout: Layout,
    choice: Choice,
    queries: np.ndarray,
    query_at: np.ndarray,
    clock: Clock,
    started: float,
    auto: bool,
) -> tuple[IndexSummary | None, dict]:
    """Build, tune and publish one candidate: (its summary, its trial). With ``auto``, a candidate whose
    recall falls short is not published (summary None); a given factory is, with a warning."""
    ic = cfg.index
    target = Path(ic.path)
    metric_name = ic.metric.value
    metric = METRICS[metric_name]
    n, dim = source.rows, source.dim
    index = make_index(choice.factory, dim, metric)
    check_layout(index, choice.factory, layout)
    if not index.is_trained:
        train_on_sample(cfg, clock, index, choice.factory, source, query_at, 0, device, metric_name)

    with StagedIndexDirectory(target) as stage:
        truth = GroundTruth(queries, ic.k, metric)
        rows = Rows(ItemsWriter(stage.file(ITEMS_FILE), source.item_schema))
        use_ray = cfg.parallel.min_vectors is not None
        with clock.phase("add"), progress_bar(cfg.progress, "add", total=n) as bar:

            def on_shard(items) -> None:
                rows.write(items)
                bar.update(items.num_rows)

            entries, _, ray_nodes = shards.add_shards(
                index, source, layout.count, stage.dir, layout.storage, cfg.ray, ic.batch_size, metric_name,
                truth, on_shard, use_ray=use_ray,
            )  # fmt: skip
        rows.items.close()
        index = shards.open_shards(stage.dir, entries, dim)
        if index.ntotal != n:
            raise RuntimeError(f"added {index.ntotal} vectors, expected {n}")
        own = np.asarray(query_at, dtype=np.int64)  # the queries are indexed: each is left out of its answer
        result = tune_phase(cfg, clock, index, queries, truth.labels(), own)
        trial = describe_trial(choice, result, truth.exact_qps)
        if auto and not result.reached:
            log.warning("index.factory=auto: %s: %s; not kept", choice.factory, trial["outcome"])
            return None, trial  # leaving the block unpublished removes the staging directory
        seconds = round(time.perf_counter() - started, 2)
        recall = recall_of(result, cfg, len(queries), "leave-one-out")
        info = new_info(source, choice.factory, dim, metric_name, index, result, recall, seconds, truth.exact_qps)
        info.text = keywords.requested(cfg.index.text, source.item_schema.names)
        shards.describe(info, entries, layout.storage, -(-n // layout.count))
        with clock.phase("write"):
            memory = finish(stage, index, rows.all_ids(), info)

    return created_summary(
        info,
        cfg,
        choice,
        result,
        reason=choice.reason,
        device=device,
        clock=clock,
        started=started,
        memory_bytes=memory,
        ray_tasks=layout.count if use_ray else 0,
        ray_nodes=ray_nodes,
    ), trial
