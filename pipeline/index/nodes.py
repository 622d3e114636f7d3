"""FAISS's wrapper indexes, walked in one place.

An index built from a factory string is a chain of wrappers around one inner index: a rotation
(``IndexPreTransform``: OPQ, PCA…) around a re-rank (``IndexRefine``: ``RFlat``, ``Refine(SQfp16)``)
around the index that finds candidates (IVF, HNSW, flat). ``chain`` lists them outermost first,
downcast to their concrete types; the other helpers read what build, parallel, tune and choose need,
and ``apply_search_params`` sets the search-time knobs on every node that takes them.
"""

from __future__ import annotations

from typing import Any

import faiss


def chain(index: faiss.Index) -> list[faiss.Index]:
    """``index`` and the indexes it wraps, outermost first, each downcast; the last is the innermost
    (through ``IndexPreTransform.index``, ``IndexRefine.base_index`` and the first shard of ``IndexShards``).
    The caller keeps ``index`` referenced: dropping it frees the C++ objects the nodes point into."""
    nodes, node = [], faiss.downcast_index(index)
    while True:
        nodes.append(node)
        if isinstance(node, faiss.IndexShards):  # shards of one trained index: walk the first
            node = faiss.downcast_index(node.at(0))
        elif isinstance(node, faiss.IndexRefine):
            node = faiss.downcast_index(node.base_index)
        elif isinstance(node, faiss.IndexPreTransform):
            node = faiss.downcast_index(node.index)
        else:
            return nodes


def transforms(index: faiss.Index) -> list[faiss.VectorTransform]:
    """The vector transforms of every ``IndexPreTransform`` in the chain, downcast, in order."""
    found = []
    for node in chain(index):
        if isinstance(node, faiss.IndexPreTransform):
            found += [faiss.downcast_VectorTransform(node.chain.at(i)) for i in range(node.chain.size())]
    return found


def refine_of(index: faiss.Index) -> faiss.IndexRefine | None:
    """The re-rank wrapper of the chain, if any."""
    return next((node for node in chain(index) if isinstance(node, faiss.IndexRefine)), None)


def hnsw_of(index: faiss.Index) -> faiss.IndexHNSW | None:
    """The HNSW graph index of the chain, if any (not an IVF's graph quantizer)."""
    inner = chain(index)[-1]
    return inner if isinstance(inner, faiss.IndexHNSW) else None


def apply_search_params(index: faiss.Index, params: dict[str, Any]) -> None:
    """Set search-time parameters (nprobe, efSearch, k_factor_rf, …) on ``index`` and its sub-indexes."""
    if params:
        faiss.ParameterSpace().set_index_parameters(index, ",".join(f"{k}={v}" for k, v in params.items()))
