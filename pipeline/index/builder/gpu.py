"""Training and adding with a GPU's help: k-means and list assignment on the GPU, the index on the CPU.

The index written to disk only ever references CPU objects: GPU copies are attached for the duration of
``train`` or of a ``coarse_quantizer_on`` block, and detached after. Without a GPU (``device="cpu"``)
the same functions train and add on the CPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import faiss
import numpy as np

from pipeline.index.nodes import transforms


def _opq_matrices(index: faiss.Index) -> list[faiss.OPQMatrix]:
    return [t for t in transforms(index) if isinstance(t, faiss.OPQMatrix)]


def train(index: faiss.Index, sample: np.ndarray, device: str) -> None:
    """Train ``index`` on ``sample``; on a GPU, the coarse k-means runs there (the index stays on the CPU)."""
    keep = []  # FAISS holds raw pointers to these during training
    ivf = faiss.try_extract_index_ivf(index)
    pq = getattr(faiss.downcast_index(ivf), "pq", None) if ivf is not None else None
    for opq in _opq_matrices(index):
        if pq is not None and pq.nbits == 4:  # OPQ trains for 8-bit codes by default: 16x slower, wrong target
            keep.append(faiss.ProductQuantizer(opq.d_out, opq.M, 4))
            opq.pq = keep[-1]
    if device == "cuda" and ivf is not None:
        keep.append(faiss.index_cpu_to_all_gpus(faiss.IndexFlat(ivf.d, ivf.quantizer.metric_type)))
        ivf.clustering_index = keep[-1]
    try:
        index.train(sample)
    finally:
        if ivf is not None:
            ivf.clustering_index = None
        for opq in _opq_matrices(index):
            opq.pq = None


@contextmanager
def coarse_quantizer_on(index: faiss.Index, device: str) -> Iterator[None]:
    """While adding on a GPU, assign vectors to inverted lists there (the costly part of an IVF add)."""
    ivf = faiss.try_extract_index_ivf(index)
    if device != "cuda" or ivf is None or not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
        yield  # graph quantizers (IVF..._HNSW) have no GPU form: they assign on the CPU
        return
    cpu_quantizer = ivf.quantizer
    gpu_quantizer = faiss.index_cpu_to_all_gpus(cpu_quantizer)
    ivf.quantizer = gpu_quantizer
    try:
        yield
    finally:
        ivf.quantizer = cpu_quantizer  # the index written to disk references only CPU objects
        del gpu_quantizer
