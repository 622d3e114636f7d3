"""The steps every `latent index` run shares (one-file create, sharded create, append): the held-out tune
queries, the item rows and id map, tuning, index.json, publishing, and the summary of a new index."""

from __future__ import annotations

import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from pipeline.config import IndexCommandConfig
from pipeline.errors import LatentError
from pipeline.index.builder.add import held_out_mask
from pipeline.index.builder.gpu import train
from pipeline.index.builder.summary import Clock, IndexSummary, progress_bar, summarize
from pipeline.index.builder.tune import TuneResult, tune
from pipeline.index.input.embeddings import EmbeddingSource
from pipeline.index.input.read import read_rows
from pipeline.index.keywords import TEXT_DIR, build_keyword_index
from pipeline.index.metadata import describe_items, read_items
from pipeline.index.plan.choose import (
    Choice,
    build_bytes,
    choose_factory,
    estimate_index_bytes,
    exact_bytes,
    human,
    plan_candidates,
    train_rows,
)
from pipeline.index.recall import without_self
from pipeline.index.store import shards
from pipeline.index.store.directory import ItemsWriter, StagedIndexDirectory, write_id_map
from pipeline.index.store.format import IDS_FILE, INDEX_FILE, ITEMS_FILE, IndexInfo, Recall
from pipeline.runtime import RUNS_DIR


def query_count(cfg: IndexCommandConfig, n: int) -> int:
    return int(min(cfg.index.tune_queries, max(1, n // 5)))  # small corpora: a fifth of the rows at most


def held_out_rows(n: int, queries: int, seed: int) -> np.ndarray:
    """The sorted rows held out of the index while tuning: the tune queries."""
    return np.sort(np.random.default_rng(seed).choice(n, size=min(n, queries), replace=False))


def read_tune_queries(
    cfg: IndexCommandConfig, clock: Clock, source: EmbeddingSource, metric_name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The tune queries: their rows (``held_out_rows``, sorted) and their vectors, read under a progress bar."""
    query_at = held_out_rows(source.rows, query_count(cfg, source.rows), cfg.index.seed)
    with clock.phase("read"), progress_bar(cfg.progress, "read", total=len(query_at)) as bar:
        (queries,) = read_rows(source, [query_at], cfg.index.batch_size, metric_name)
        bar.update(len(query_at))
    return query_at, queries


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
    info.metadata = describe_items(stage.file(ITEMS_FILE))  # the schema where= checks against
    if info.text is not None:  # the keyword index, rebuilt over every row (build and append alike)
        info.text = build_keyword_index(read_items(stage.file(ITEMS_FILE)), stage.file(TEXT_DIR), info.text)
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
    entry = {"mode": "create", "at": stamp, "added": n, "skipped": 0, "seconds": seconds}
    if source.null_rows:  # optional key: rows whose vector is null, not indexed
        entry["null_rows"] = source.null_rows
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
        history=[entry],
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


def plan_choices(
    cfg: IndexCommandConfig, source: EmbeddingSource, budget: int, metric: int, queries: int
) -> list[Choice]:
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


def train_on_sample(
    cfg, clock, index, factory: str, source, held_out, attempt: int, device: str, metric_name: str
) -> None:
    """Read a training sample (rows other than the held-out ones), train ``index`` on it, free it."""
    ic = cfg.index
    n = source.rows
    want = train_rows(factory, n, source.dim, index.metric_type, ic.train_sample)
    rng = np.random.default_rng([ic.seed, attempt + 1])
    picked = rng.choice(n, size=min(n, want + len(held_out)), replace=False)
    picked = np.sort(picked[held_out_mask(held_out, 0, n)[picked]][:want])
    with clock.phase("read"), progress_bar(cfg.progress, "read", total=len(picked)) as bar:
        (sample,) = read_rows(source, [picked], ic.batch_size, metric_name)
        bar.update(len(picked))
    with clock.phase("train"), progress_bar(cfg.progress, "train", total=len(sample)) as bar:
        train(index, sample, device)
        bar.update(len(sample))


def describe_trial(choice: Choice, result: TuneResult, exact_qps: float | None) -> dict[str, Any]:
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


def explain_unreachable(cfg, tried, n: int, dim: int, metric: int, queries: int, exact_fits: bool) -> LatentError:
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


def created_summary(
    info: IndexInfo,
    cfg: IndexCommandConfig,
    choice: Choice,
    result: TuneResult,
    *,
    reason: str,
    device: str,
    clock: Clock,
    started: float,
    memory_bytes: int,
    **extra: Any,
) -> IndexSummary:
    """The summary of a newly built index (one file or shards): every input row with a vector added, none
    skipped; the candidate's warning when its target was missed, and the recall warning."""
    null_rows = int(info.history[-1].get("null_rows", 0))
    return summarize(
        info,
        path=str(Path(cfg.index.path)),
        mode=cfg.index.mode.value,
        reason=reason,
        device=device,
        input_rows=info.ntotal + null_rows,
        added=info.ntotal,
        skipped=0,
        null_rows=null_rows,
        clock=clock,
        started=started,
        memory_bytes=memory_bytes,
        warnings=[w for w in (choice.warning,) if w and not result.reached] + recall_warning(result, cfg),
        **extra,
    )
