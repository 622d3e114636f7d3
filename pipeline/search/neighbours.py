"""`latent knn`'s answers: the searcher stage, the neighbours it writes, and the near-duplicate groups drawn from them.

``KnnBatches`` (the Ray Data actor: opens the index once, answers a batch of query records) and
``write_neighbours`` (commits a shard) are the job's second and third stages; ``near_duplicate_groups``
reads the neighbours back for ``threshold``. Output layout and schemas: docs/search.md.
"""

from __future__ import annotations

import posixpath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.encode.model import ModelSpec
from pipeline.errors import LatentError
from pipeline.io.shards import arrow_to_vectors, commit_table, filesystem, list_shards
from pipeline.io.vectors import vector_errors
from pipeline.search.queries import query_where
from pipeline.search.searcher import QueryError, Searcher, decode_query_image

NEIGHBORS_DIR = "neighbors"
GROUPS_DIR = "groups"
NEIGHBORS_SCHEMA = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("neighbor_ids", pa.list_(pa.string())),
        pa.field("scores", pa.list_(pa.float32())),
    ]
)
GROUPS_SCHEMA = pa.schema(
    [
        pa.field("group_id", pa.int64(), nullable=False),
        pa.field("size", pa.int64(), nullable=False),
        pa.field("member_ids", pa.list_(pa.string())),
    ]
)


# -- the searcher actor ---------------------------------------------------------------------------------


def neighbours_to_arrow(ids: np.ndarray, scores: np.ndarray) -> tuple[pa.ListArray, pa.ListArray]:
    """(n, k) ids/scores with None/NaN for missing hits -> list columns holding the hits only."""
    valid = ids != None  # noqa: E711  (element-wise on an object array)
    offsets = pa.array(np.concatenate([[0], np.cumsum(valid.sum(axis=1))]).astype(np.int32))
    neighbor_ids = pa.ListArray.from_arrays(offsets, pa.array(ids[valid].tolist(), pa.string()))
    hit_scores = pa.ListArray.from_arrays(offsets, pa.array(scores[valid].astype(np.float32), pa.float32()))
    return neighbor_ids, hit_scores


class KnnBatches:
    """Ray Data actor: query records in, neighbour rows (and error rows) out. Opens the index once."""

    def __init__(
        self, index_path: str, spec: ModelSpec | None, k: int, kind: str, threads: int | None, where: str | None = None
    ) -> None:
        if threads:
            import faiss
            import torch

            faiss.omp_set_num_threads(threads)
            torch.set_num_threads(threads)
        self.searcher = Searcher.open(index_path, query_model=spec)
        self.k, self.kind, self.where = k, kind, where

    def _queries(self, batch: pa.Table, ok: np.ndarray, errors: list[str | None]) -> dict[str, Any]:
        column = batch.column("query")
        if self.kind == "vector":
            vectors = np.zeros((batch.num_rows, self.searcher.dim), np.float32)
            good = column.filter(pa.array(ok))
            if len(good):
                found = arrow_to_vectors(good)
                if found.shape[1] != self.searcher.dim:
                    raise LatentError(f"query vectors are {found.shape[1]}-d, the index holds {self.searcher.dim}-d")
                vectors[ok] = found
            metric = "ip" if self.searcher.info.normalized else "l2"
            for i, problem in enumerate(vector_errors(vectors, metric)):
                if ok[i] and problem:
                    ok[i], errors[i] = False, problem
            return {"vectors": vectors[ok]}
        values = column.to_pylist()
        if self.kind == "text":
            return {"texts": [values[i] for i in np.flatnonzero(ok)]}
        images = []
        for i in np.flatnonzero(ok):
            try:
                images.append(decode_query_image(values[i]))
            except QueryError as err:
                ok[i], errors[i] = False, str(err).replace("images[0]", "image")
        return {"images": images}

    def __call__(self, batch: pa.Table) -> pa.Table:
        errors = batch.column("error").to_pylist()
        ok = np.array([e is None for e in errors], dtype=bool)
        query = self._queries(batch, ok, errors)
        n = batch.num_rows
        ids = np.full((n, self.k), None, dtype=object)
        scores = np.full((n, self.k), np.nan, dtype=np.float32)
        if ok.any():
            # one search per distinct predicate (the job's where AND the query's own): a batch shares one mask each
            own = batch.column("where").to_pylist() if "where" in batch.column_names else [None] * n
            rows = np.flatnonzero(ok)
            wheres = [query_where(self.where, own[i]) for i in rows]
            for where in dict.fromkeys(wheres):
                mine = np.array([w == where for w in wheres])
                part = {name: _take(values, mine) for name, values in query.items()}
                result = self.searcher.search(**part, k=self.k, with_items=False, where=where)
                ids[rows[mine]], scores[rows[mine]] = result.ids, result.scores
        neighbor_ids, hit_scores = neighbours_to_arrow(ids, scores)
        return pa.table(
            {
                "query_id": batch.column("query_id"),
                "neighbor_ids": neighbor_ids,
                "scores": hit_scores,
                "error": pa.array(errors, pa.string()),
            }
        )


def _take(values: Any, mine: np.ndarray) -> Any:
    """The queries of one predicate: rows of a vector array, items of a list of texts or images."""
    if isinstance(values, np.ndarray):
        return values[mine]
    return [v for v, keep in zip(values, mine) if keep]


def write_neighbours(good: pa.Table, output: str) -> None:
    """Stage 3 (task): commit answered queries as a neighbours shard (the runner records failed ones)."""
    commit_table(good.select(NEIGHBORS_SCHEMA.names).cast(NEIGHBORS_SCHEMA), posixpath.join(output, NEIGHBORS_DIR))


# -- near-duplicate groups ---------------------------------------------------------------------------


def _components(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the graph with edges (a[i], b[i]) on n nodes: each node's smallest node."""
    labels = np.arange(n)
    while True:
        low = np.minimum(labels[a], labels[b])
        before = labels.copy()
        np.minimum.at(labels, a, low)
        np.minimum.at(labels, b, low)
        labels = labels[labels]  # pointer jumping: follow to the root in O(log) rounds
        if np.array_equal(labels, before):
            return labels


def near_duplicate_groups(neighbors: str, threshold: float) -> pa.Table:
    """Groups of ids linked by neighbour pairs scoring >= ``threshold`` (GROUPS_SCHEMA), read shard by shard.

    Only the pairs are held in memory. Groups are ordered by their smallest member id; members sorted."""
    left, right = [], []
    for path in list_shards(neighbors):
        fs, local = filesystem(path)
        with fs.open(local, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=NEIGHBORS_SCHEMA.names):
                flat_ids = pc.list_flatten(batch.column("neighbor_ids"))
                flat_scores = pc.list_flatten(batch.column("scores"))
                queries = batch.column("query_id").take(pc.list_parent_indices(batch.column("neighbor_ids")))
                keep = pc.and_(pc.greater_equal(flat_scores, threshold), pc.not_equal(flat_ids, queries))
                left.append(queries.filter(keep))
                right.append(flat_ids.filter(keep))
    a = pa.chunked_array(left, pa.string()).combine_chunks() if left else pa.array([], pa.string())
    b = pa.chunked_array(right, pa.string()).combine_chunks() if right else pa.array([], pa.string())
    if len(a) == 0:
        return GROUPS_SCHEMA.empty_table()
    nodes = pc.unique(pa.concat_arrays([a, b])).sort()  # sorted: a component's smallest node is its smallest id
    ia = pc.index_in(a, value_set=nodes).to_numpy()
    ib = pc.index_in(b, value_set=nodes).to_numpy()
    roots = _components(ia, ib, len(nodes))
    order = np.argsort(roots, kind="stable")  # by root, then by node: members come out sorted
    _, starts, sizes = np.unique(roots[order], return_index=True, return_counts=True)
    offsets = pa.array(np.concatenate([starts, [len(order)]]).astype(np.int32))
    members = pa.ListArray.from_arrays(offsets, nodes.take(pa.array(order)))
    return pa.table(
        {"group_id": np.arange(len(sizes), dtype=np.int64), "size": sizes.astype(np.int64), "member_ids": members},
        schema=GROUPS_SCHEMA,
    )
