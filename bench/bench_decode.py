"""Decode parity and cost: the exact CPU path against the encoder-side tensor path and draft decoding.

    python bench/bench_decode.py [--images 200] [--large 64]

With ViT-B-32 (random weights, seeded), on the embed bench corpus (~400x300 JPEGs, bench_embed.py)
and on larger JPEGs (500x375 .. 1600x1200, gpu_check.py's sizes):
  - cosine of each image's vector from (a) gpu_decode's tensor path on CPU tensors (the code that runs
    on the GPU with nvJPEG) and (b) decode.draft=true, against the exact path (Pillow + open_clip);
  - the exact path against open_clip's own preprocess (must be 1.0);
  - decode+resize images per CPU-second for each path (process CPU time: robust to a shared machine).
Writes bench/results/decode.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

MAX_PIXELS = 100_000_000


def cosines(a: np.ndarray, b: np.ndarray) -> dict:
    c = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    return {"min": round(float(c.min()), 5), "mean": round(float(c.mean()), 5)}


def measure(blobs: list[bytes], encoder, transform) -> dict:
    import open_clip  # noqa: F401  (the reference transform below is open_clip's)
    from PIL import Image

    from pipeline.encode.gpu_decode import BatchImageDecoder
    from pipeline.encode.preprocess import ImagePrep, decode_image

    prep, draft = encoder.prep, ImagePrep.from_transform(transform, draft=True)
    rates = {}
    start = time.process_time()
    exact = np.stack([prep.prepare(decode_image(b, MAX_PIXELS)) for b in blobs])
    rates["exact"] = len(blobs) / (time.process_time() - start)
    start = time.process_time()
    drafted = np.stack([draft.prepare(decode_image(b, MAX_PIXELS, draft.draft_request)) for b in blobs])
    rates["draft"] = len(blobs) / (time.process_time() - start)
    decoder = BatchImageDecoder(prep, transform, "cpu", MAX_PIXELS)
    start = time.process_time()
    tensor = torch.cat([decoder(blobs[i : i + 64])[0] for i in range(0, len(blobs), 64)])
    rates["tensor (CPU)"] = len(blobs) / (time.process_time() - start)

    import io

    reference = torch.stack([transform(Image.open(io.BytesIO(b))) for b in blobs])
    with torch.inference_mode():
        ref_vectors = torch.nn.functional.normalize(encoder.model.encode_image(reference), dim=-1).numpy()
    vectors = encoder.encode_pixels(exact)
    return {
        "images": len(blobs),
        "exact_vs_open_clip": cosines(vectors, ref_vectors),
        "tensor_vs_exact": cosines(encoder.encode_pixel_tensor(tensor), vectors),
        "draft_vs_exact": cosines(encoder.encode_pixels(drafted), vectors),
        "draft_used": int(sum(draft.draft_request(*_size(b)) is not None for b in blobs)),
        "images_per_cpu_second": {k: round(v, 1) for k, v in rates.items()},
    }


def _size(blob: bytes) -> tuple[int, int]:
    import io

    from PIL import Image

    return Image.open(io.BytesIO(blob)).size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--large", type=int, default=64)
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "embed-work"))
    args = parser.parse_args()
    torch.set_num_threads(2)  # rates are per CPU-second (process time), so threads do not inflate them

    from bench_embed import make_corpus
    from gpu_check import JPEG_SIZES, _jpeg

    from pipeline.encode.encoder import ClipEncoder
    from pipeline.encode.model import resolve_model

    encoder = ClipEncoder(resolve_model("ViT-B-32", None), threads=1)
    transform = encoder.transform
    corpus = make_corpus(Path(args.work) / "corpus-1000", 1000)
    bench = [p.read_bytes() for p in sorted(corpus.glob("*.jpg"))[: args.images]]
    large = [_jpeg((i, *JPEG_SIZES[i % len(JPEG_SIZES)])) for i in range(args.large)]
    result = {"bench corpus (~400x300)": measure(bench, encoder, transform)}
    result["large JPEGs (0.19-1.9 MP)"] = measure(large, encoder, transform)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "decode.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(render_markdown(result))


def render_markdown(result: dict) -> str:
    lines = [
        "| corpus | exact vs open_clip | tensor path vs exact | draft vs exact (images drafted) "
        "| decode+resize images per CPU-second: exact / draft / tensor |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name, r in result.items():
        rate = r["images_per_cpu_second"]
        lines.append(
            f"| {name}, {r['images']} images | min {r['exact_vs_open_clip']['min']:.5f} "
            f"| min {r['tensor_vs_exact']['min']:.5f}, mean {r['tensor_vs_exact']['mean']:.5f} "
            f"| min {r['draft_vs_exact']['min']:.5f}, mean {r['draft_vs_exact']['mean']:.5f} ({r['draft_used']}) "
            f"| {rate['exact']:.0f} / {rate['draft']:.0f} / {rate['tensor (CPU)']:.0f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
