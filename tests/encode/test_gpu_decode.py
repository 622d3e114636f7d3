"""The encoder-side batch decoder (gpu_decode) on CPU tensors: the same code as on the GPU, against the exact path."""

from __future__ import annotations

import io

import numpy as np
import open_clip
import pyarrow as pa
import pytest
import torch
from PIL import Image
from skimage import data

from pipeline.config import Device
from pipeline.encode.encoder import ClipEncoder, EmbedBatches
from pipeline.encode.gpu_decode import BatchImageDecoder, TensorTransform, decode_in_encoder
from pipeline.encode.model import resolve_model
from pipeline.encode.preprocess import ImagePrep, decode_image, prepare_records
from pipeline.errors import LatentError

MAX_PIXELS = 50_000_000
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")


def _encode(image: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def photo_jpegs(scale: float = 1.0) -> list[bytes]:
    """Real photos as JPEGs of several sizes and aspect ratios (grey ones stay grey)."""
    out = []
    for i, name in enumerate(PHOTOS):
        image = Image.fromarray(getattr(data, name)())
        w, h = image.size
        image = image.resize((max(8, int(w * scale * (1 + i % 3) / 2)), max(8, int(h * scale))), Image.BICUBIC)
        out.append(_encode(image, quality=90))
    return out


def vit_transform(size: int = 224, **cfg):
    return open_clip.transform.image_transform_v2(open_clip.transform.PreprocessCfg(size=size, **cfg), is_train=False)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


@pytest.mark.parametrize(
    "cfg",
    [{}, {"resize_mode": "longest", "fill_color": 0}, {"interpolation": "bilinear"}, {"size": (160, 224)}],
    ids=["shortest-bicubic", "longest-pad", "bilinear", "non-square"],
)
def test_tensor_path_pixels_match_pillow_within_rounding(cfg):
    from torchvision.transforms import Compose

    transform = vit_transform(**{"size": 224, **cfg})
    size = tuple(cfg.get("size", (224, 224)))
    pil_steps = Compose(transform.transforms[:-2])  # open_clip's own steps up to ToTensor (longest has no CenterCrop)
    prep = ImagePrep(pil_steps, (0.0,) * 3, (1.0,) * 3, size)
    decoder = BatchImageDecoder(prep, transform, "cpu", MAX_PIXELS)
    blobs = photo_jpegs()
    pixels, errors = decoder(blobs)
    assert errors == [None] * len(blobs) and decoder.fallbacks == 0
    for got, blob in zip(pixels.numpy(), blobs):
        expected = prep.prepare(decode_image(blob, MAX_PIXELS))
        diff = np.abs(got.astype(np.int16) - expected.astype(np.int16))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 6  # another JPEG decoder and resize kernel


def test_non_jpeg_cmyk_and_broken_images_fall_back_one_by_one_without_failing_the_batch():
    transform = vit_transform(64)
    prep = ImagePrep.from_transform(transform)
    decoder = BatchImageDecoder(prep, transform, "cpu", MAX_PIXELS)
    photo = Image.fromarray(data.astronaut())
    good = _encode(photo, quality=90)
    blobs = [
        good,
        _encode(photo, "PNG"),
        _encode(photo.convert("CMYK"), quality=90),
        _encode(photo, quality=90, progressive=True),
        good[: len(good) // 3],  # truncated: refused by the batch decoder and by Pillow
        b"not an image",
        None,  # a row that already failed upstream
        good,
    ]
    pixels, errors = decoder(blobs)
    assert errors[0] is None and errors[7] is None
    assert errors[1] is None and errors[2] is None and errors[3] is None
    assert errors[4].startswith("cannot decode") and errors[5].startswith("cannot decode")
    assert errors[6] is None and not pixels[6].any()  # skipped rows stay zero, their error is upstream's
    for i in (1, 2):  # PNG and CMYK take the exact CPU path
        np.testing.assert_array_equal(pixels[i].numpy(), prep.prepare(decode_image(blobs[i], MAX_PIXELS)))
    assert not pixels[4].any() and not pixels[5].any()
    assert torch.equal(pixels[0], pixels[7])


def test_too_large_images_are_recorded_not_decoded():
    transform = vit_transform(64)
    decoder = BatchImageDecoder(ImagePrep.from_transform(transform), transform, "cpu", max_pixels=100 * 100)
    _, errors = decoder([_encode(Image.new("RGB", (300, 200)), quality=80)])
    assert errors[0].startswith("image too large")


@pytest.fixture(scope="module")
def encoders(tiny_model):
    spec = resolve_model(tiny_model, None)
    return spec, ClipEncoder(spec, threads=2)


def test_embed_actor_decoding_bytes_gives_the_cpu_path_vectors(encoders, tiny_model):
    """EmbedBatches with decode_images (as on a GPU, here on CPU tensors) against EmbedBatches on pixels."""
    spec, encoder = encoders
    blobs = photo_jpegs() + [b"broken"]
    n = len(blobs)
    records = pa.table(
        {
            "id": [str(i) for i in range(n)],
            "source": ["s"] * n,
            "text": [None] * n,
            "image": pa.array(blobs, pa.binary()),
            "error": pa.array([None] * n, pa.string()),
        }
    )
    exact = EmbedBatches(spec, "image", "float32")
    on_encoder = EmbedBatches(spec, "image", "float32", decode_images=True, max_pixels=MAX_PIXELS)
    a = exact(prepare_records(records, encoder.prep, False, MAX_PIXELS))
    b = on_encoder(prepare_records(records, encoder.prep, False, MAX_PIXELS, keep_bytes=True))
    assert [e is None for e in a.column("error").to_pylist()] == [e is None for e in b.column("error").to_pylist()]
    assert b.column("error")[n - 1].as_py().startswith("cannot decode") and "image" not in b.column_names
    va = np.asarray(a.column("image_embedding").to_pylist()[: n - 1])
    vb = np.asarray(b.column("image_embedding").to_pylist()[: n - 1])
    assert cosine(va, vb).min() >= 0.995


@pytest.mark.slow  # a full ViT-B-32 on CPU (~12 s of CPU): out of `make test-fast`
def test_vit_b32_vectors_of_the_tensor_path_and_of_draft_decoding_stay_close_to_exact():
    """The parity of docs/benchmarks.md at test size: ViT-B-32 (random weights), photos up to ~2 MP."""
    spec = resolve_model("ViT-B-32", None)
    encoder = ClipEncoder(spec, threads=2)
    blobs = photo_jpegs(scale=3.0)  # 1.5-2.3 MP: large enough for draft to decode at 1/2 or 1/4
    exact = np.stack([encoder.prep.prepare(decode_image(b, MAX_PIXELS)) for b in blobs])
    draft_prep = ImagePrep.from_transform(encoder.transform, draft=True)
    drafted = np.stack([draft_prep.prepare(decode_image(b, MAX_PIXELS, draft_prep.draft_request)) for b in blobs])
    assert not np.array_equal(exact, drafted)  # draft really decoded at a reduced scale
    tensor, errors = BatchImageDecoder(encoder.prep, encoder.transform, "cpu", MAX_PIXELS)(blobs)
    assert errors == [None] * len(blobs)
    reference = encoder.encode_pixels(exact)
    assert cosine(reference, encoder.encode_pixels(drafted)).min() >= 0.995
    assert cosine(reference, encoder.encode_pixel_tensor(tensor)).min() >= 0.995


def test_draft_is_off_by_default_and_skips_images_that_are_not_much_larger():
    prep = ImagePrep.from_transform(vit_transform(224))
    assert prep.draft is False
    assert prep.draft_request(640, 480) is None  # 2x margin of 298x224 is more than half of it
    assert prep.draft_request(4000, 3000) == (298 * 2, 224 * 2)
    image = decode_image(_encode(Image.new("RGB", (4000, 3000)), quality=80), MAX_PIXELS, prep.draft_request)
    assert image.size == (1000, 750)  # Pillow picked 1/4: still >= 2x the resize's 298x224


def test_decode_device_is_decided_from_the_encoder_device():
    transform = vit_transform(64)
    assert decode_in_encoder(Device.auto, "cuda", transform) is True
    assert decode_in_encoder(Device.auto, "cpu", transform) is False
    assert decode_in_encoder(Device.cpu, "cuda", transform) is False
    with pytest.raises(LatentError, match="decode.device=cuda needs the encoder on a GPU"):
        decode_in_encoder(Device.cuda, "cpu", transform)
    TensorTransform.from_transform(transform, (64, 64))  # the eval transforms all have a tensor version


@pytest.mark.gpu
def test_nvjpeg_batch_matches_the_same_code_on_cpu_tensors():
    transform = vit_transform(224)
    prep = ImagePrep.from_transform(transform)
    blobs = photo_jpegs()
    on_gpu, gpu_errors = BatchImageDecoder(prep, transform, "cuda", MAX_PIXELS)(blobs)
    on_cpu, _ = BatchImageDecoder(prep, transform, "cpu", MAX_PIXELS)(blobs)
    assert gpu_errors == [None] * len(blobs) and on_gpu.device.type == "cuda"
    diff = (on_gpu.cpu().to(torch.int16) - on_cpu.to(torch.int16)).abs().float()
    assert diff.mean() < 1.0
