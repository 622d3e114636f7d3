"""The embed job with images decoded by the encoder (decode.device=cuda's plan), run on CPU tensors."""

from __future__ import annotations

import numpy as np
import pyarrow.dataset as pads
from conftest import embed_overrides
from corpora import write_image_folder

import pipeline.embed as embed_module
from pipeline.cli import compose
from pipeline.embed import run_embed
from pipeline.io.shards import arrow_to_vectors


def _vectors(out) -> dict[str, np.ndarray]:
    table = pads.dataset(str(out), format="parquet").to_table(columns=["id", "image_embedding"])
    return dict(zip(table.column("id").to_pylist(), arrow_to_vectors(table.column("image_embedding"))))


def test_bytes_to_the_encoder_give_the_vectors_of_the_cpu_path(local_ray, tmp_path, photos, tiny_model, monkeypatch):
    corpus = write_image_folder(tmp_path / "corpus", 12)
    (corpus / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    extra = ("modality=image", "output.dtype=float32", "max_error_fraction=0.5")
    exact = run_embed(compose("embed", embed_overrides(corpus, tmp_path / "exact", tiny_model, *extra)))
    # The plan of decode.device=cuda (image bytes to the encoder, decoded there) on this CPU-only machine:
    monkeypatch.setattr(embed_module, "decode_in_encoder", lambda *args: True)
    on_encoder = run_embed(compose("embed", embed_overrides(corpus, tmp_path / "enc", tiny_model, *extra)))
    assert (exact.rows, exact.errors) == (on_encoder.rows, on_encoder.errors) == (12, 1)
    errors = pads.dataset(str(tmp_path / "enc" / "_errors"), format="parquet").to_table().to_pylist()
    assert [e["id"] for e in errors] == ["broken.jpg"] and errors[0]["error"].startswith("cannot decode")
    a, b = _vectors(tmp_path / "exact"), _vectors(tmp_path / "enc")
    assert a.keys() == b.keys()
    cosines = [float(a[k] @ b[k] / np.linalg.norm(a[k]) / np.linalg.norm(b[k])) for k in a]
    assert min(cosines) >= 0.995


def test_decode_device_cuda_without_a_gpu_names_the_key(local_ray, tmp_path, tiny_model):
    import pytest

    from pipeline.errors import LatentError

    corpus = write_image_folder(tmp_path / "corpus", 2)
    cfg = compose("embed", embed_overrides(corpus, tmp_path / "out", tiny_model, "decode.device=cuda"))
    with pytest.raises(LatentError, match="decode.device=cuda"):
        run_embed(cfg)
