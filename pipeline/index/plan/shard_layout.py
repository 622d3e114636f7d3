"""How an index is sharded: whether merging its shards gives the unsharded answer, how many shards (a number, or
``auto`` from the memory budget), which factories ``auto`` tries for them, and each shard's rows. Plain
functions, decided before anything is built (pipeline/index/store/shards.py builds, opens and appends to them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import faiss
import numpy as np

from pipeline.errors import LatentError
from pipeline.index.nodes import chain
from pipeline.index.plan.choose import FLAT_MAX_VECTORS, Choice, estimate_index_bytes, human, nlist_for
from pipeline.index.store import ondisk


def check_shardable(index: faiss.Index, factory: str) -> None:
    """LatentError unless merging shards of ``index`` gives the unsharded answer (IVF without re-rank, Flat)."""
    nodes = chain(index)
    if any(isinstance(n, faiss.IndexRefine) for n in nodes):
        raise LatentError(
            f"index.shards: {factory} re-ranks its candidates, and shards would re-rank different candidate sets "
            f"(not the unsharded answer): shard an IVF index without re-rank (e.g. IVF4096,PQ64x4fs) or Flat"
        )
    base = nodes[-1]
    if isinstance(base, faiss.IndexIVF) or type(base) in (faiss.IndexFlat, faiss.IndexFlatIP, faiss.IndexFlatL2):
        return
    raise LatentError(
        f"index.shards: {factory} cannot be sharded exactly (each shard would build its own graph or structure): "
        f"shard an IVF index (e.g. IVF4096,PQ64x4fs) or Flat, or use index.shards=1"
    )


@dataclass
class Layout:
    """How a build splits the index: ``count`` shards, lists in memory or on disk."""

    count: int
    storage: str
    budget: int  # bytes the whole index is planned against (index.max_memory is per shard)
    choice: Choice | None  # the factory ``index.factory=auto`` gives a sharded or on-disk index
    fallbacks: list[Choice] = field(default_factory=list)  # auto's next candidates, if recall falls short

    @property
    def split(self) -> bool:
        """Whether the directory holds shard files (format 2) rather than one index.faiss."""
        return self.count > 1 or self.storage == ondisk.ONDISK


def auto_factories(n: int, storage: str) -> list[str]:
    """``index.factory=auto`` for a sharded or on-disk index, in the order tried: Flat when small and in
    memory; else IVF-SQ8, then IVF-Flat when SQ8's codes cannot reach the target, then Flat (in memory).
    Each merges exactly (no re-rank) and the IVF ones go on disk (plain array lists)."""
    if storage == ondisk.MEMORY and n <= FLAT_MAX_VECTORS:
        return ["Flat"]
    ladder = [f"IVF{nlist_for(n)},SQ8", f"IVF{nlist_for(n)},Flat"]
    return ladder + (["Flat"] if storage == ondisk.MEMORY else [])


def plan_layout(shards: str | int, storage: str, factory: str, n: int, dim: int, metric: int, budget: int) -> Layout:
    """``index.shards`` and ``index.storage`` resolved for ``n`` vectors (``budget``: index.max_memory)."""
    text = str(shards).strip().lower()
    choice, ladder = None, []
    if factory.strip().lower() == "auto" and (text != "1" or storage == ondisk.ONDISK):
        for chosen in auto_factories(n, storage):
            size = estimate_index_bytes(chosen, n, dim, metric)
            ladder.append(Choice(chosen, f"sharded/on-disk auto choice: exact shard merge; ~{human(size)}", size, 0))
        choice = ladder[0]
    used = choice.factory if choice else factory.strip()
    if text == "auto":
        if used.lower() == "auto":
            raise LatentError("index.shards=auto needs a factory to size the shards: set index.factory")
        count = resolve_count(text, n, estimate_index_bytes(used, n, dim, metric), budget)
    else:
        count = resolve_count(text, n, 0, budget)
    fallbacks = [c for c in ladder[1:] if c.index_bytes <= budget * count]  # the next ones that fit
    return Layout(count, storage, budget * count, choice, fallbacks)


def check_layout(index: faiss.Index, factory: str, layout: Layout) -> None:
    if layout.count > 1:
        check_shardable(index, factory)
    if layout.storage == ondisk.ONDISK:
        ondisk.check_ondisk(index, factory)


def resolve_count(shards: str | int, ntotal: int, index_bytes: int, budget: int) -> int:
    """``index.shards``: a positive number, or ``auto``: the fewest shards each within ``budget`` bytes."""
    text = str(shards).strip().lower()
    if text == "auto":
        return max(1, min(ntotal, math.ceil(index_bytes / max(budget, 1))))
    if not text.isdigit() or int(text) < 1:
        raise LatentError(f"index.shards={shards}: a positive number of shards, or auto (from index.max_memory)")
    count = int(text)
    if count > max(ntotal, 1):
        raise LatentError(f"index.shards={count}: more shards than the {ntotal} rows of the input")
    return count


def split_rows(n: int, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous label ranges [a, b) of about equal size covering 0..n-1."""
    edges = np.linspace(0, n, count + 1).round().astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
