"""GPU paths: skipped without CUDA (tests/conftest.py), run on a GPU machine."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.encode.encoder import ClipEncoder
from pipeline.encode.model import resolve_model

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_half_precision_matches_cpu_fp32(tiny_model, tiny_checkpoint, photos, precision):
    spec = resolve_model(tiny_model, str(tiny_checkpoint))
    cpu = ClipEncoder(spec)
    gpu = ClipEncoder(spec.on("cuda", precision))
    images = [Image.open(p) for p in sorted(photos.rglob("*.jpg"))]
    texts = ["a cat", "a rocket on the launch pad", "coffee"]
    for ours, reference in [
        (gpu.encode_images(images), cpu.encode_images(images)),
        (gpu.encode_texts(texts), cpu.encode_texts(texts)),
    ]:
        cosine = np.sum(ours * reference, axis=1)
        assert cosine.min() > 0.99


def test_embed_job_on_gpu(local_gpu_ray, tmp_path, photos, tiny_model):
    from conftest import embed_overrides

    from pipeline.cli import compose
    from pipeline.embed import run_embed

    cfg = compose("embed", embed_overrides(photos, tmp_path / "out", tiny_model, "model.device=cuda"))
    summary = run_embed(cfg)
    assert summary.rows == 6 and summary.errors == 0
