"""`latent index index.mode=append`: add the input's new rows to an index, without retraining.

An input row whose id the index already holds is compared with the vector the index stores for it:
the same vector (a grown dataset re-read, as after a resumed embed job) is skipped as already
indexed; a different vector is a duplicate id, handled by ``index.on_duplicate_id``: ``error``
(default: refuse, naming the id; nothing written), ``skip`` (keep the indexed vector; warned) or
``replace`` (the input's vector and metadata replace the indexed ones under the same label: the index
is re-filled from its stored vectors, without retraining). Recall is re-measured on input rows
(leave-one-out: a query's own row is left out of both lists), with the same margin as a build.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from pipeline.config import DuplicatePolicy, IndexCommandConfig
from pipeline.errors import LatentError
from pipeline.index.builder.gpu import coarse_quantizer_on
from pipeline.index.builder.steps import (
    Rows,
    finish,
    now,
    query_count,
    read_tune_queries,
    recall_of,
    recall_warning,
    tune_phase,
)
from pipeline.index.builder.summary import Clock, IndexSummary, progress_bar, summarize
from pipeline.index.input.embeddings import EmbeddingSource
from pipeline.index.input.read import iter_batches
from pipeline.index.plan.choose import build_bytes, estimate_index_bytes, human
from pipeline.index.recall import GroundTruth
from pipeline.index.store import shards
from pipeline.index.store.directory import IndexDirectory, ItemsWriter, StagedIndexDirectory, is_index_directory
from pipeline.index.store.format import ITEMS_FILE, IndexInfo
from pipeline.index.store.integrity import lossy_scores

SAME_COSINE = 0.999  # an input vector this close to the stored one is the same row (float16 storage rounds)
SAME_COSINE_LOSSY = 0.8  # … when the index stores lossy codes (PQ) that only approximate it
REFILL_CHUNK = 65536  # stored vectors re-added at a time by on_duplicate_id=replace


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


class _Stored:
    """The vectors an index stores for labels, to tell a re-read row from a different vector under its id.
    A sharded index is read shard by shard (FAISS's IndexShards cannot reconstruct)."""

    def __init__(self, index: faiss.Index, factory: str) -> None:
        self.same = SAME_COSINE_LOSSY if lossy_scores(factory) else SAME_COSINE
        self.parts = shards.shard_parts(index) if shards.is_sharded(index) else [index]
        self.firsts = np.cumsum([0] + [p.ntotal for p in self.parts])
        self.ivfs = [ivf for p in self.parts if (ivf := faiss.try_extract_index_ivf(p)) is not None]
        for ivf in self.ivfs:
            ivf.make_direct_map()  # label -> list entry; dropped again before the index is written
        try:
            self.parts[0].reconstruct(0)
            self.available = True
        except RuntimeError:
            self.available = False

    def vectors(self, labels: np.ndarray) -> np.ndarray:
        """The stored vectors of global ``labels``, each read from the shard that holds it."""
        labels = np.asarray(labels, dtype=np.int64)
        part_of = np.searchsorted(self.firsts, labels, side="right") - 1
        out = np.empty((len(labels), self.parts[0].d), dtype=np.float32)
        for p in np.unique(part_of):
            mine = np.flatnonzero(part_of == p)
            out[mine] = self.parts[p].reconstruct_batch(labels[mine] - self.firsts[p])
        return out

    def differ(self, labels: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """Mask over ``labels``: the input vector is not the one stored (False where it cannot tell)."""
        if not self.available or not len(labels):
            return np.zeros(len(labels), dtype=bool)
        stored = self.vectors(labels)
        cos = np.einsum("ij,ij->i", stored, vectors) / np.maximum(
            np.linalg.norm(stored, axis=1) * np.linalg.norm(vectors, axis=1), 1e-12
        )
        return cos < self.same

    def release(self) -> None:
        for ivf in self.ivfs:
            ivf.set_direct_map_type(faiss.DirectMap.NoMap)


def _duplicate_error(item: dict, where: str) -> LatentError:
    return LatentError(
        f"duplicate id '{item['id']}' ({where}): the index holds this id with a different vector; set "
        f"index.on_duplicate_id=skip to keep the indexed vector, or replace to take the input's "
        f"(nothing was written)"
    )


def _refill(index: faiss.Index, replacements: dict[int, np.ndarray]) -> faiss.Index:
    """A copy of ``index`` re-filled from its stored vectors in label order, with ``replacements`` applied:
    the same labels, the same training, the graph or lists built for the new vectors."""
    refilled = faiss.clone_index(index)
    refilled.reset()
    labels = np.fromiter(replacements, dtype=np.int64)
    order = np.argsort(labels)
    labels, vectors = labels[order], np.stack([replacements[int(label)] for label in labels[order]])
    for start in range(0, index.ntotal, REFILL_CHUNK):
        chunk = index.reconstruct_n(start, min(REFILL_CHUNK, index.ntotal - start))
        lo, hi = np.searchsorted(labels, [start, start + len(chunk)])
        chunk[labels[lo:hi] - start] = vectors[lo:hi]
        refilled.add(chunk)
    return refilled


def _patched_batches(existing: IndexDirectory, replaced_items: dict[int, pa.Table]):
    """items.arrow's old batches, with the rows of replaced labels swapped for the input's."""
    rows = existing.info.items_batch_rows
    for b, batch in enumerate(existing.item_batches()):
        table = pa.Table.from_batches([batch])
        mine = {label: t for label, t in replaced_items.items() if b * rows <= label < b * rows + batch.num_rows}
        if mine:
            extra = pa.concat_tables([t.cast(table.schema) for t in mine.values()])
            take = np.arange(table.num_rows)
            for i, label in enumerate(mine):
                take[label - b * rows] = table.num_rows + i
            table = pa.concat_tables([table, extra]).take(pa.array(take))
        yield table


def append_index(cfg: IndexCommandConfig, source: EmbeddingSource, device: str, budget: int) -> IndexSummary:
    """Add the input's rows whose ids the index at ``cfg.index.path`` lacks, without retraining."""
    started = time.perf_counter()
    clock = Clock()
    ic = cfg.index
    policy = DuplicatePolicy(ic.on_duplicate_id)
    target = Path(ic.path)
    if not is_index_directory(target):
        raise LatentError(f"index.mode=append: no index at {target} (build one with index.mode=create)")
    existing = IndexDirectory.open(target, mmap=False)  # read into memory: FAISS adds to it
    old = existing.info
    _check_append(old, source, cfg)
    # at least this many rows once appended (more if the input's rows are all new): refuse what cannot fit
    at_least = max(old.ntotal, source.rows)
    need = estimate_index_bytes(old.factory, at_least, old.dim, old.faiss_metric) + build_bytes(
        at_least, old.dim, 0, ic.batch_size, query_count(cfg, source.rows)
    )
    if need > budget:
        raise LatentError(
            f"index.max_memory={human(budget)} is too small to append to {old.factory} with {at_least}+ vectors "
            f"(~{human(need)}); raise index.max_memory"
        )
    metric_name = old.metric
    index = existing.index
    appender = shards.appender_for(existing)  # a sharded index: new rows fill its last shard, then new ones
    if appender is not None and policy == DuplicatePolicy.replace:
        raise LatentError(
            "index.on_duplicate_id=replace is not supported on a sharded or on-disk index (the shards are not "
            "re-filled); use skip or error, or rebuild with index.mode=overwrite"
        )
    stored = _Stored(index, old.factory)
    if appender is not None:
        index = appender
    n_in = source.rows
    query_at, queries = read_tune_queries(cfg, clock, source, metric_name)

    truth = GroundTruth(queries, ic.k, old.faiss_metric)
    own = np.full(len(query_at), -1, dtype=np.int64)
    seen = np.zeros(old.ntotal, dtype=bool)  # old rows present in this input with their indexed vector
    added = unchanged = kept = 0
    replacements: dict[int, np.ndarray] = {}
    replaced_items: dict[int, pa.Table] = {}
    with StagedIndexDirectory(target) as stage:
        fresh_path = stage.file(ITEMS_FILE + ".new")  # the new rows' items, until the old ones are written
        fresh_out = ItemsWriter(fresh_path, existing.item_schema)
        with (
            clock.phase("add"),
            progress_bar(cfg.progress, "add", total=n_in) as bar,
            coarse_quantizer_on(index if appender is None else appender.parts[-1], device),
        ):
            for batch in iter_batches(source, ic.batch_size, metric=metric_name):
                labels = existing.labels_of(batch.items.column("id"))  # -1: a new id
                is_old = labels >= 0
                old_at = np.flatnonzero(is_old)
                differ = old_at[stored.differ(labels[old_at], batch.vectors[old_at])]
                if len(differ) and policy == DuplicatePolicy.error:
                    row = batch.items.slice(int(differ[0]), 1).to_pylist()[0]
                    shard = Path(source.files[batch.file].path).name
                    raise _duplicate_error(row, f"{shard}, row {int(batch.rows[differ[0]])}")
                fresh = np.flatnonzero(~is_old)
                labels[fresh] = index.ntotal + np.arange(len(fresh))
                if len(fresh):
                    index.add(np.ascontiguousarray(batch.vectors[fresh]))
                    fresh_out.write(batch.items.take(pa.array(fresh)))
                counted = np.ones(len(labels), dtype=bool)  # rows whose vector the index will hold
                if policy == DuplicatePolicy.replace:
                    for i in differ:
                        replacements[int(labels[i])] = batch.vectors[i].copy()
                        replaced_items[int(labels[i])] = batch.items.slice(int(i), 1)
                else:
                    counted[differ] = False  # skip: the index keeps its own vector for these ids
                seen[labels[is_old & counted]] = True
                truth.add(batch.vectors[counted], labels[counted])
                lo, hi = np.searchsorted(query_at, [batch.first, batch.first + len(batch.vectors)])
                own[lo:hi] = labels[query_at[lo:hi] - batch.first]
                added += len(fresh)
                unchanged += len(old_at) - len(differ)
                kept += len(differ) if policy == DuplicatePolicy.skip else 0
                bar.update(len(batch.vectors))
        fresh_out.close()
        stored.release()
        base = dict(
            path=str(target), mode="append", device=device, input_rows=n_in + source.null_rows,
            null_rows=source.null_rows, clock=clock, started=started,
        )  # fmt: skip
        if added == 0 and not replacements:  # nothing new: the index stays exactly as it was (staging dropped)
            return summarize(
                old, **base, reason=f"nothing new to add{_unchanged(unchanged)}", added=0, skipped=unchanged + kept,
                memory_bytes=old.memory_bytes, warnings=_skip_warnings(kept),
            )  # fmt: skip
        if appender is not None:
            index = appender.joined()
        if replacements:
            with clock.phase("add"):
                index = _refill(index, replacements)
        rows_out = Rows(ItemsWriter(stage.file(ITEMS_FILE), existing.item_schema))
        for table in _patched_batches(existing, replaced_items):  # the old rows first, as they were (or replaced)
            rows_out.write(table)
        for batch in _arrow_tables(fresh_path):
            rows_out.write(batch)
        rows_out.items.close()
        fresh_path.unlink()
        covered = bool(seen.all())
        valid = None if covered else np.concatenate([seen, np.ones(index.ntotal - old.ntotal, dtype=bool)])
        result = tune_phase(cfg, clock, index, queries, truth.labels(), own, valid)
        stamp = now()
        seconds = round(time.perf_counter() - started, 2)
        entry = {"mode": "append", "at": stamp, "added": added, "skipped": unchanged + kept, "seconds": seconds}
        if replacements:
            entry["replaced"] = len(replacements)
        if source.null_rows:  # optional key: input rows whose vector is null, not indexed
            entry["null_rows"] = source.null_rows
        info = IndexInfo(
            **{
                **asdict(old),
                "embedding": old.embedding,
                "ntotal": int(index.ntotal),
                "search_params": result.params,
                "recall": recall_of(result, cfg, len(queries), "leave-one-out"),
                "qps": round(result.qps, 1),
                "build_seconds": round(old.build_seconds + seconds, 2),
                "updated_at": stamp,
                "history": [*old.history, entry],
                "exact_qps": round(truth.exact_qps, 1) if truth.exact_qps else None,
            }
        )
        if appender is not None:
            entries, _ = appender.write(stage.dir, old.storage)
            shards.record_layout(info, entries, old.storage, appender.capacity)
        with clock.phase("write"):
            memory = finish(stage, index, rows_out.all_ids(), info)

    warnings = recall_warning(result, cfg) + _skip_warnings(kept)
    if not covered:
        warnings.append(
            f"the input holds {int(seen.sum())} of the index's {old.ntotal} earlier rows: recall was measured "
            f"over the rows of this input only"
        )
    return summarize(
        info, **base, reason=f"appended without retraining{_unchanged(unchanged)}", added=added,
        skipped=unchanged + kept, memory_bytes=memory, warnings=warnings, replaced=len(replacements),
    )  # fmt: skip


def _unchanged(unchanged: int) -> str:
    return f"; skipped {unchanged} rows already indexed (same id, same vector)" if unchanged else ""


def _skip_warnings(kept: int) -> list[str]:
    out = []
    if kept:
        out.append(
            f"skipped {kept} rows whose id the index holds with a different vector (index.on_duplicate_id=skip): "
            f"the indexed vectors were kept; replace takes the input's"
        )
    return out


def _arrow_tables(path: Path):
    """The record batches of an Arrow IPC file, as tables."""
    with pa.memory_map(str(path)) as source:
        reader = pa.ipc.open_file(source)
        for i in range(reader.num_record_batches):
            yield pa.Table.from_batches([reader.get_batch(i)])
