from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.encode.model import describe_model, load_model, resolve_model
from pipeline.encode.preprocess import BadImage, ImagePrep, decode_image
from pipeline.errors import LatentError


def test_random_weights_are_the_same_in_every_process(tiny_model):
    spec = resolve_model(tiny_model, None)
    a, b = load_model(spec), load_model(spec)
    for pa_, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa_, pb)
    assert a.fingerprint["random_weights_seed"] == 0


def test_checkpoint_is_loaded_and_hashed(tiny_model, tiny_checkpoint):
    import open_clip

    spec = resolve_model(tiny_model, str(tiny_checkpoint))
    loaded = load_model(spec)
    reference = open_clip.create_model(tiny_model, pretrained=str(tiny_checkpoint))
    for pa_, pb in zip(loaded.model.parameters(), reference.parameters()):
        assert torch.equal(pa_, pb)
    assert len(loaded.fingerprint["checkpoint_sha256"]) == 64
    assert loaded.fingerprint["pretrained"] == "tiny.pt"


def test_describe_model_matches_loaded_model(tiny_model, tiny_checkpoint):
    spec = resolve_model(tiny_model, str(tiny_checkpoint))
    assert describe_model(spec).fingerprint == load_model(spec).fingerprint
    assert describe_model(spec).fingerprint["dim"] == 32


def test_offline_pretrained_tag_fails_fast_with_the_overrides_that_work(monkeypatch):
    import pipeline.encode.model as model_module

    monkeypatch.setattr(model_module, "_cached_hf_file", lambda *a: None)
    monkeypatch.setattr(model_module, "_host_reachable", lambda *a, **k: False)
    with pytest.raises(LatentError) as err:
        resolve_model("ViT-B-32", "openai")
    assert "model.pretrained=null" in str(err.value)
    assert "model.pretrained=/path/to/checkpoint.pt" in str(err.value)


@pytest.mark.parametrize(
    ("name", "pretrained", "message"),
    [
        ("not-a-model", None, "model.name"),
        ("ViT-B-32", "no-such-tag", "neither a checkpoint file nor a pretrained tag"),
        ("ViT-B-32", "/no/such/file.pt", "checkpoint file not found"),
    ],
)
def test_bad_model_settings_name_the_key(name, pretrained, message):
    with pytest.raises(LatentError, match=message):
        resolve_model(name, pretrained)


def test_split_transform_equals_open_clip_preprocess(tiny_model, photos):
    loaded = load_model(resolve_model(tiny_model, None))
    prep = ImagePrep.from_transform(loaded.image_transform)
    for path in sorted(photos.rglob("*.jpg")) + sorted(photos.rglob("*.png")):
        image = Image.open(path)
        expected = loaded.image_transform(image)
        array = prep.prepare(decode_image(path.read_bytes(), max_pixels=10**8))
        got = prep.to_tensor_normalized(torch.from_numpy(array[None].copy()))[0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"not an image at all", "cannot decode"), (None, "truncated")],
)
def test_decode_image_rejects_bad_bytes(photos, data, message):
    if data is None:
        data = next(photos.rglob("*.jpg")).read_bytes()[:2000]
        message = "cannot decode"
    with pytest.raises(BadImage, match=message):
        decode_image(data, max_pixels=10**8)


def test_decode_image_refuses_decompression_bombs_before_decoding():
    import io

    buf = io.BytesIO()
    Image.fromarray(np.zeros((3000, 3000), dtype=np.uint8)).save(buf, format="PNG")
    with pytest.raises(BadImage, match="too large"):
        decode_image(buf.getvalue(), max_pixels=1_000_000)


def test_checkpoint_loads_without_random_init_into_the_same_tensors(tiny_model, tiny_checkpoint):
    """load_model builds on the meta device and assigns the checkpoint's tensors: parameters and buffers
    (the causal text mask is rebuilt, not read) equal open_clip's ordinary load."""
    import open_clip

    from pipeline.encode.model import _create_from_checkpoint

    spec = resolve_model(tiny_model, str(tiny_checkpoint))
    fast = _create_from_checkpoint(spec, {"force_quick_gelu": False, "device": "cpu"})
    assert fast is not None
    reference = open_clip.create_model(tiny_model, pretrained=str(tiny_checkpoint))
    fast_buffers, ref_buffers = dict(fast.named_buffers()), dict(reference.named_buffers())
    assert fast_buffers.keys() == ref_buffers.keys() and "attn_mask" in fast_buffers
    fast_tensors = {**dict(fast.named_parameters()), **fast_buffers}
    for name, tensor in [*reference.named_parameters(), *reference.named_buffers()]:
        assert torch.equal(fast_tensors[name], tensor), name


def test_checkpoint_hash_is_cached_by_size_and_mtime(tmp_path, monkeypatch):
    import os

    import pipeline.encode.model as model_module
    from pipeline.encode.model import checkpoint_sha256, file_sha256

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = tmp_path / "w.pt"
    path.write_bytes(b"a" * 1000)
    calls = []
    real = model_module.file_sha256
    monkeypatch.setattr(model_module, "file_sha256", lambda p: calls.append(p) or real(p))
    first = checkpoint_sha256(str(path))
    assert checkpoint_sha256(str(path)) == first == file_sha256(str(path)) and len(calls) == 1
    path.write_bytes(b"b" * 1000)  # same size, new content and mtime
    os.utime(path, ns=(0, 10**9))
    assert checkpoint_sha256(str(path)) == file_sha256(str(path)) != first and len(calls) == 2
    assert (tmp_path / "cache" / "latent" / "sha256.json").exists()


def test_a_config_known_only_to_the_driver_is_registered_without_leaving_files(tiny_model, tmp_path, monkeypatch):
    import dataclasses
    import tempfile

    import open_clip

    from pipeline.encode.model import _ensure_registered

    spec = resolve_model(tiny_model, None)
    unseen = dataclasses.replace(spec, name=f"{tiny_model}-worker-only")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    _ensure_registered(unseen)
    assert unseen.name in open_clip.list_models()
    assert list(tmp_path.iterdir()) == []
    open_clip.add_model_config(str(tmp_path))  # a rescan after the file is gone keeps the config
    assert unseen.name in open_clip.list_models()
