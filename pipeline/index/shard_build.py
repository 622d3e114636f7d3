"""`latent index` for a sharded or on-disk index (``index.shards`` > 1 or ``index.storage=ondisk``).

The create path of ``build.build_index`` when the directory holds shard files (index.json format 2):
one trained index, copied into every shard and filled by ``shards.add_shards`` (a Ray task per shard),
tuned on the joined shards, published by ``build.finish``. Unlike the one-file build, the tune queries
stay in the index (labels follow the input's row order, which the shard ranges need) and are left out
of their own answers (leave-one-out), as append measures; auto builds one candidate (the sharding
choice of ``shards.plan_layout``), not a sequence.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from pipeline.config import IndexCommandConfig
from pipeline.index import shards
from pipeline.index.build import (
    Rows,
    _plan,
    _train,
    finish,
    held_out_rows,
    new_info,
    query_count,
    recall_of,
    recall_warning,
    tune_phase,
)
from pipeline.index.choose import make_index
from pipeline.index.read import EmbeddingSource, read_rows
from pipeline.index.store import ITEMS_FILE, METRICS, ItemsWriter, StagedIndexDirectory
from pipeline.index.summary import Clock, IndexSummary, progress_bar, summarize
from pipeline.index.tune import GroundTruth


def build_sharded(
    cfg: IndexCommandConfig, source: EmbeddingSource, device: str, layout: shards.Layout, clock: Clock, started: float
) -> IndexSummary:
    """A new sharded (or on-disk) index directory at ``cfg.index.path`` from every row of ``source``."""
    ic = cfg.index
    target = Path(ic.path)
    metric_name = ic.metric.value
    metric = METRICS[metric_name]
    n, dim = source.rows, source.dim
    n_queries = query_count(cfg, n)
    choice = layout.choice or _plan(cfg, source, layout.budget, metric, n_queries)[0]
    index = make_index(choice.factory, dim, metric)
    shards.check_layout(index, choice.factory, layout)
    query_at = held_out_rows(n, n_queries, ic.seed)
    with clock.phase("read"), progress_bar(cfg.progress, "read", total=len(query_at)) as bar:
        (queries,) = read_rows(source, [query_at], ic.batch_size, metric_name)
        bar.update(len(query_at))
    if not index.is_trained:
        _train(cfg, clock, index, choice.factory, source, query_at, 0, device, metric_name)

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
        seconds = round(time.perf_counter() - started, 2)
        recall = recall_of(result, cfg, len(queries), "leave-one-out")
        info = new_info(source, choice.factory, dim, metric_name, index, result, recall, seconds, truth.exact_qps)
        shards.describe(info, entries, layout.storage, -(-n // layout.count))
        with clock.phase("write"):
            memory = finish(stage, index, rows.all_ids(), info)

    return summarize(
        info,
        path=str(target),
        mode=ic.mode.value,
        reason=choice.reason,
        device=device,
        input_rows=n,
        added=n,
        skipped=0,
        clock=clock,
        started=started,
        memory_bytes=memory,
        warnings=[w for w in (choice.warning,) if w and not result.reached] + recall_warning(result, cfg),
        ray_tasks=layout.count if use_ray else 0,
        ray_nodes=ray_nodes,
    )
