"""`latent index` for a sharded or on-disk index (``index.shards`` > 1 or ``index.storage=ondisk``).

The create path of ``build.build_index`` when the directory holds shard files (index.json format 2):
one trained index, copied into every shard and filled by ``add_shards`` (a Ray task per shard),
tuned on the joined shards, published by ``steps.finish``. Unlike the one-file build, the tune queries
stay in the index (labels follow the input's row order, which the shard ranges need) and are left out
of their own answers (leave-one-out), as append measures; auto tries the candidates of
``shard_layout.auto_factories`` in order until one reaches the target recall (or the last one).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from pipeline.config import IndexCommandConfig
from pipeline.index import keywords
from pipeline.index.builder.add import fill
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
from pipeline.index.plan.choose import Choice, make_index
from pipeline.index.plan.shard_layout import Layout, check_layout, split_rows
from pipeline.index.recall import GroundTruth
from pipeline.index.store import shards
from pipeline.index.store.directory import ItemsWriter, StagedIndexDirectory
from pipeline.index.store.format import ITEMS_FILE, METRICS

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

            entries, _, ray_nodes = add_shards(
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
        shards.record_layout(info, entries, layout.storage, -(-n // layout.count))
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


# --- the shards, each filled by a Ray task (or in turn, in this process) ------------------------------


@dataclass
class ShardResult:
    entry: shards.ShardEntry
    items: pa.Table
    distances: np.ndarray  # the shard's exact neighbours of the tune queries (global labels)
    labels: np.ndarray
    node: str
    bytes: int  # size of the shard's files


def build_shard(
    trained: bytes | np.ndarray,
    source: EmbeddingSource,
    number: int,
    rows: tuple[int, int],
    directory: str,
    storage: str,
    batch_size: int,
    metric: str,
    queries: np.ndarray,
    k: int,
    threads: int,
) -> ShardResult:
    """One Ray task: the rows [a, b) added to a copy of the ``trained`` (serialized) empty index, written as
    shard ``number`` into ``directory``."""
    import ray

    faiss.omp_set_num_threads(threads)
    index = faiss.deserialize_index(np.frombuffer(trained, dtype=np.uint8) if isinstance(trained, bytes) else trained)
    truth = GroundTruth(queries, k, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    tables = [items for items, _, _ in fill(index, source, batch_size, metric, truth, rows=rows, first_label=rows[0])]
    if index.ntotal != rows[1] - rows[0]:
        raise RuntimeError(f"shard {number}: added {index.ntotal} vectors, expected {rows[1] - rows[0]}")
    name = shards.SHARD_FILE.format(number)
    size = shards.write_shard(index, Path(directory), name, storage)
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    items = pa.concat_tables(tables) if tables else source.item_schema.empty_table()
    entry = shards.ShardEntry(name, rows[0], int(index.ntotal))
    return ShardResult(entry, items, truth.heap.D, truth.heap.I, node, size)


def add_shards(
    index: faiss.Index,
    source: EmbeddingSource,
    count: int,
    directory: Path,
    storage: str,
    ray_cfg: Any,
    batch_size: int,
    metric: str,
    truth: GroundTruth,
    on_shard: Callable[[pa.Table], Any],
    use_ray: bool = True,
) -> tuple[list[shards.ShardEntry], int, list[str]]:
    """Every row added to ``count`` shards of the trained ``index`` by Ray tasks (one per shard, spread over
    the nodes), written into ``directory``. ``on_shard(items)`` sees the shards' item rows in label order.
    Returns the shards, their total bytes and the ids of the nodes that built them. ``use_ray=False``
    (``parallel.min_vectors=null``): the same tasks one after another in this process."""
    ranges = split_rows(source.rows, count)
    trained = faiss.serialize_index(index)
    args = (str(directory), storage, batch_size, metric)
    if use_ray:
        import ray

        from pipeline.runtime import init_ray

        init_ray(ray_cfg)
        trained, queries = ray.put(trained), ray.put(truth.queries)
        # SPREAD: the shards go to every node of the cluster, not first to the driver's
        remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(build_shard)
        refs = [
            remote.remote(trained, source, s, rows, *args, queries, truth.k - 1, 1) for s, rows in enumerate(ranges)
        ]
        results = (ray.get(ref) for ref in refs)
    else:
        threads = faiss.omp_get_max_threads()
        results = (
            build_shard(trained, source, s, rows, *args, truth.queries, truth.k - 1, threads)
            for s, rows in enumerate(ranges)
        )
    entries, total, nodes = [], 0, {}
    for result in results:  # in shard order: the items follow the labels
        entries.append(result.entry)
        total += result.bytes
        nodes[result.node] = None
        truth.merge(result.distances, result.labels)
        on_shard(result.items)
        del result
    return entries, total, list(nodes)
