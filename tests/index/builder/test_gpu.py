"""GPU training and adding (skipped without CUDA): the index written is a CPU index like any other."""

from __future__ import annotations

import faiss
import pytest

from index.helpers import build, dataset, vectors
from pipeline.config import Device
from pipeline.index.store.directory import IndexDirectory
from pipeline.runtime import resolve_device

pytestmark = pytest.mark.gpu


def test_auto_device_is_the_gpu():
    assert faiss.get_num_gpus() > 0 and resolve_device(Device.auto, faiss.get_num_gpus()) == "cuda"


@pytest.mark.parametrize("factory", ["IVF64,Flat", "IVF64,PQ8x4fs,RFlat", "OPQ8_32,IVF64,PQ8x4fs,Refine(SQfp16)"])
def test_gpu_build_matches_cpu_build(tmp_path, factory):
    src = dataset(tmp_path / "ds", vectors(8000, seed=6))
    common = [f"index.factory='{factory}'", "index.target_recall=0.9"]
    gpu = build(src, tmp_path / "gpu", *common, "index.device=cuda")
    cpu = build(src, tmp_path / "cpu", *common, "index.device=cpu")
    assert gpu.device == "cuda" and cpu.device == "cpu"
    assert gpu.recall.value >= 0.9 and abs(gpu.recall.value - cpu.recall.value) < 0.05
    d = IndexDirectory.open(tmp_path / "gpu")  # a plain CPU index on disk
    assert d.index.ntotal == 8000 and "Gpu" not in type(faiss.downcast_index(d.index)).__name__
