"""The add phase's one loop: stream rows of the input into a trained index, less the held-out rows.

Every way of filling an index goes through ``fill``: the one-file build in this process
(``build._add``), a Ray task adding a group of input files to a copy of the index
(``parallel.add_group``), and a Ray task filling one shard of a sharded index (``sharded.build_shard``).
Labels are the rows' positions among the rows added (held-out rows take none); the exact neighbours
of the tune queries (``GroundTruth``) are accumulated as the vectors go past.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import faiss
import numpy as np
import pyarrow as pa

from pipeline.index.input.embeddings import EmbeddingSource
from pipeline.index.input.read import iter_batches
from pipeline.index.recall import GroundTruth

_NONE_HELD = np.zeros(0, np.int64)


def held_out_mask(held_out: np.ndarray, first: int, n: int) -> np.ndarray:
    """Which of the global rows ``first..first+n`` are NOT in the sorted ``held_out`` rows."""
    keep = np.ones(n, dtype=bool)
    lo, hi = np.searchsorted(held_out, [first, first + n])
    keep[held_out[lo:hi] - first] = False
    return keep


def fill(
    index: faiss.Index,
    source: EmbeddingSource,
    batch_size: int,
    metric: str,
    truth: GroundTruth | None = None,
    *,
    files: Sequence[int] | None = None,
    rows: tuple[int, int] | None = None,
    held_out: np.ndarray | None = None,
    first_label: int = 0,
    items: bool = True,
) -> Iterator[tuple[pa.Table | None, pa.Table | None, int]]:
    """Add the input's vectors to ``index``: every row, the input ``files`` given by position, or the
    global ``rows`` [a, b); less the sorted ``held_out`` global rows. Labels start at ``first_label``;
    ``truth`` (if given) takes each added batch. Yields, per batch, the added rows' items, the held-out
    rows' items (both None when ``items`` is False) and how many input rows the batch covered."""
    held_out = _NONE_HELD if held_out is None else held_out
    if rows is not None:
        offsets = source.offsets
        files = [s for s in range(len(source.files)) if offsets[s] < rows[1] and offsets[s + 1] > rows[0]]
    label = first_label
    for batch in iter_batches(source, batch_size, metric=metric, files=files, items=items):
        first, vectors, table = batch.first, batch.vectors, batch.items
        if rows is not None:  # cut to [a, b)
            lo, hi = max(rows[0], first), min(rows[1], first + len(vectors))
            if hi <= lo:
                continue
            vectors = vectors[lo - first : hi - first]
            table = table.slice(lo - first, hi - lo) if items else None
            first = lo
        keep = held_out_mask(held_out, first, len(vectors))
        added = np.ascontiguousarray(vectors if keep.all() else vectors[keep])
        index.add(added)
        if truth is not None:
            truth.add(added, np.arange(label, label + len(added)))
        label += len(added)
        if items:
            yield table.filter(pa.array(keep)), table.filter(pa.array(~keep)), len(vectors)
        else:
            yield None, None, len(vectors)
