"""The add phase on Ray: train once, add groups of input files in parallel tasks, merge the inverted lists.

Only IVF indexes split this way (their lists merge by concatenation, ``ListMerger``); graph
and flat indexes are added in one process. The plan lives in ``add_on_ray``: the trained, empty index
goes to the object store once; each task reads a contiguous group of input files, adds them to its
own copy (``add.fill``, the loop every add goes through), and returns the filled copy with the group's
item rows and its part of the exact neighbours of the tune queries; the driver merges results in file
order, so labels follow the input's row order exactly as in a single-process add. Rows held out as tune
queries are skipped by the tasks (their item rows come back apart) and added by the driver after
tuning, as in a single-process build.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from pipeline.config import RayConfig
from pipeline.index.builder.add import fill
from pipeline.index.input.embeddings import EmbeddingSource
from pipeline.index.nodes import chain
from pipeline.index.recall import GroundTruth

GROUPS_PER_TASK = 4  # more, smaller groups than tasks: balanced load, smaller results on the driver


def can_merge(index: faiss.Index) -> bool:
    """Whether ``ListMerger`` can combine copies of ``index`` (IVF, possibly rotated or re-ranked)."""
    return faiss.try_extract_index_ivf(index) is not None


class ListMerger:
    """Appends filled copies of one trained IVF index to it, in label order.

    Array inverted lists merge with FAISS ``merge_from``. Fast-scan lists (4-bit PQ packed in blocks of
    32 codes) cannot be appended to safely in FAISS 1.15 (appending to a partly filled block corrupts
    memory), so their codes are unpacked per list as parts arrive and packed once per list at the end.
    A re-rank index (``RFlat``, ``Refine(...)``) is appended to in order; wrappers' counts are updated.
    """

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.nodes = chain(index)
        self.ivf = self.nodes[-1]
        self.refine = next((n for n in self.nodes if isinstance(n, faiss.IndexRefine)), None)
        self.fast_scan = isinstance(self.ivf, faiss.IndexIVFFastScan)
        if self.fast_scan:
            self.packer = self.ivf.get_CodePacker()
            self.ids: list[list[np.ndarray]] = [[] for _ in range(self.ivf.nlist)]
            self.codes: list[list[np.ndarray]] = [[] for _ in range(self.ivf.nlist)]
        self.total = index.ntotal

    def add(self, part: faiss.Index, first_label: int) -> None:
        """Append ``part`` (a filled copy of the same trained index), its labels shifted by ``first_label``."""
        nodes = chain(part)
        self.total += part.ntotal  # before merging: FAISS's merge_from empties the source
        if self.refine is not None:
            self.refine.refine_index.merge_from(nodes[self.nodes.index(self.refine)].refine_index, 0)
        if self.fast_scan:
            self._collect(nodes[-1], first_label)
        else:
            self.ivf.merge_from(nodes[-1], first_label)

    def _collect(self, ivf: faiss.IndexIVF, first_label: int) -> None:
        lists, nvec, block, size = ivf.invlists, self.packer.nvec, self.packer.block_size, self.packer.code_size
        for i in range(ivf.nlist):
            n = lists.list_size(i)
            if not n:
                continue
            self.ids[i].append(faiss.rev_swig_ptr(lists.get_ids(i), n).astype(np.int64) + first_label)
            blocks = faiss.rev_swig_ptr(lists.get_codes(i), -(-n // nvec) * block)
            flat = np.empty(-(-n // nvec) * nvec * size, dtype=np.uint8)
            for b in range(-(-n // nvec)):
                self.packer.unpack_all(faiss.swig_ptr(blocks[b * block :]), faiss.swig_ptr(flat[b * nvec * size :]))
            self.codes[i].append(flat[: n * size])

    def finish(self) -> faiss.Index:
        if self.fast_scan:
            nvec, block, size = self.packer.nvec, self.packer.block_size, self.packer.code_size
            for i in range(self.ivf.nlist):
                if not self.ids[i]:
                    continue
                ids, codes = np.concatenate(self.ids[i]), np.concatenate(self.codes[i])
                self.ids[i] = self.codes[i] = []  # free as we go: peak is one list over the index
                n_blocks = -(-len(ids) // nvec)
                codes = np.concatenate([codes, np.zeros(n_blocks * nvec * size - len(codes), dtype=np.uint8)])
                packed = np.zeros(n_blocks * block, dtype=np.uint8)
                for b in range(n_blocks):
                    self.packer.pack_all(faiss.swig_ptr(codes[b * nvec * size :]), faiss.swig_ptr(packed[b * block :]))
                self.ivf.invlists.add_entries(i, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(packed))
        for node in self.nodes:
            node.ntotal = self.total
        return self.index


def split_groups(source: EmbeddingSource, groups: int) -> list[list[int]]:
    """Contiguous groups of shard indices with about equal rows each."""
    if groups >= len(source.files):
        return [[s] for s in range(len(source.files))]
    groups = max(1, groups)
    offsets = source.offsets
    bounds = np.searchsorted(offsets[1:], np.linspace(0, offsets[-1], groups + 1)[1:-1], side="left") + 1
    edges = [0, *sorted(set(int(b) for b in bounds)), len(source.files)]
    return [list(range(a, b)) for a, b in zip(edges, edges[1:]) if b > a]


@dataclass
class GroupResult:
    index: np.ndarray  # faiss.serialize_index of the group's filled copy
    items: pa.Table
    held_items: pa.Table  # item rows of the group's held-out rows (the tune queries), in row order
    distances: np.ndarray  # the group's exact neighbours of the tune queries (global labels)
    labels: np.ndarray
    rows: int
    node: str  # the Ray node that added the group (its node id)


def add_group(
    trained: np.ndarray,
    source: EmbeddingSource,
    files: list[int],
    first_label: int,
    batch_size: int,
    metric: str,
    queries: np.ndarray,
    k: int,
    threads: int,
    held_out: np.ndarray | None = None,
) -> GroupResult:
    """One Ray task: the input ``files`` added to a copy of the ``trained`` (serialized) empty index, less
    the ``held_out`` global rows (sorted), whose items come back in ``held_items``."""
    import ray

    faiss.omp_set_num_threads(threads)
    index = faiss.deserialize_index(trained)
    truth = GroundTruth(queries, k, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
    tables, held = [], []
    for kept, held_items, _ in fill(
        index, source, batch_size, metric, truth, files=files, held_out=held_out, first_label=first_label
    ):
        tables.append(kept)
        held.append(held_items)
    items = pa.concat_tables(tables) if tables else source.item_schema.empty_table()
    held_items = pa.concat_tables(held) if held else source.item_schema.empty_table()
    node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
    serialized = faiss.serialize_index(index)
    return GroupResult(serialized, items, held_items, truth.heap.D, truth.heap.I, index.ntotal, node)


def add_on_ray(
    index: faiss.Index,
    source: EmbeddingSource,
    ray_cfg: RayConfig,
    tasks: int | None,
    batch_size: int,
    metric: str,
    truth: GroundTruth,
    on_group: Callable[[pa.Table, pa.Table], Any],
    held_out: np.ndarray,
) -> tuple[faiss.Index, int, list[str]]:
    """Every shard but the ``held_out`` rows added to a copy of the trained ``index`` by Ray tasks;
    ``on_group(items, held_items)`` sees each group's item rows in label order and its held-out rows.
    Returns the filled index, how many tasks ran at once, and the ids of the nodes that added groups
    (each once, in the order first seen)."""
    import ray

    from pipeline.runtime import cluster_cpus, init_ray

    init_ray(ray_cfg)
    width = max(1, min(tasks or cluster_cpus(), len(source.files)))
    groups = split_groups(source, width * GROUPS_PER_TASK)
    offsets = source.offsets
    serialized = faiss.serialize_index(index)
    trained = ray.put(serialized)
    merger = ListMerger(faiss.deserialize_index(serialized))  # same concrete types as the tasks' copies
    queries = ray.put(truth.queries)
    # SPREAD: on a cluster the groups go to every node (each reads its own shards), not first to the driver's
    remote = ray.remote(num_cpus=1, scheduling_strategy="SPREAD")(add_group)
    held = ray.put(held_out)
    # a group's first label: its first row, less the held-out rows before it
    firsts = [int(offsets[g[0]] - np.searchsorted(held_out, offsets[g[0]])) for g in groups]
    refs = [
        remote.remote(trained, source, group, first, batch_size, metric, queries, truth.k - 1, 1, held)
        for group, first in zip(groups, firsts)
    ]
    nodes: dict[str, None] = {}
    for first, ref in zip(firsts, refs):
        result: GroupResult = ray.get(ref)
        nodes[result.node] = None
        merger.add(faiss.deserialize_index(result.index), first)
        truth.merge(result.distances, result.labels)
        on_group(result.items, result.held_items)
        del result
    return merger.finish(), width, list(nodes)
