"""One-shot GPU check: latent's GPU paths measured on a bare GPU machine in a few minutes.

    python bench/gpu_check.py [--out DIR] [--images 20000] [--index-rows 1000000]
    python bench/gpu_check.py --cpu --out /tmp/gc   # the dry run at a tiny size (tests/bench/test_gpu_check.py)

Needs torch + torchvision (the machine's own), numpy, pyarrow, pandas, and the wheels that
bench/gpu_prepare.py fetched (Ray, open_clip, Hydra, FAISS if it fits); installs nothing. Measures:
  1. forward-only ceilings of ViT-B-32 and ViT-L-14 (random weights) in fp16 and bf16, batch 256-1024;
  2. `latent embed` (the library's run_embed, on a local Ray) over generated JPEGs of several sizes up
     to ~2 MP, with decode.device=cpu and decode.device=cuda: images/s and the share of the ceiling;
  3. `latent index` on 1M x 512 clustered vectors with FAISS on the GPU (k-means and list assignment)
     when FAISS sees a GPU, on the CPU otherwise; and exact top-k search on the GPU with torch.
Each step is timed and recorded even when it fails; writes gpu_check.json and gpu_check.md to --out.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
import traceback
from contextlib import contextmanager
from multiprocessing import Pool
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
JPEG_SIZES = [(500, 375), (800, 600), (1280, 960), (1600, 1200)]  # up to ~1.9 MP
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "hubble_deep_field", "immunohistochemistry")
TINY = {  # --cpu: a tiny open_clip model so the dry run takes seconds
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


_OUT: Path | None = None  # where each finished step's figures are written at once (a timeout keeps them)


def save(result: dict) -> None:
    if _OUT is not None:
        (_OUT / "gpu_check.json").write_text(json.dumps(result, indent=2, default=str))
        (_OUT / "gpu_check.md").write_text(render_markdown(result))


@contextmanager
def step(result: dict, name: str):
    """Record a step's seconds, and its error instead of stopping the whole check; save what is known so far."""
    start = time.perf_counter()
    entry = result.setdefault(name, {})
    try:
        yield entry
    except Exception as err:  # a failed step must not hide the others' figures
        entry["error"] = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
        entry["traceback"] = traceback.format_exc()[-2000:]
        print(f"[gpu_check] {name} failed: {entry['error']}", file=sys.stderr, flush=True)
    entry["seconds"] = round(time.perf_counter() - start, 2)
    print(f"[gpu_check] {name}: {entry['seconds']} s", file=sys.stderr, flush=True)
    save(result)


def environment(device: str) -> dict:
    import torch
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__}
    info["cpus"] = os.cpu_count()
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    for module in ("ray", "open_clip", "hydra", "faiss"):
        try:
            info[module] = getattr(__import__(module), "__version__", "?")
        except Exception as err:
            info[module] = f"missing ({type(err).__name__})"
    return info


def register_tiny() -> str:
    import tempfile

    import open_clip

    if "gpu-check-tiny" not in open_clip.list_models():
        path = Path(tempfile.mkdtemp()) / "gpu-check-tiny.json"
        path.write_text(json.dumps(TINY))
        open_clip.add_model_config(path)
    return "gpu-check-tiny"


def save_checkpoint(arch: str, path: Path) -> Path:
    """Random (seeded) weights as a local checkpoint: workers then load it without random init."""
    import open_clip
    import torch

    if not path.exists():
        torch.manual_seed(0)
        torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), path)
    return path


def measure_ceiling(checkpoint: Path, arch: str, device: str, precision: str, batch: int, seconds: float) -> float:
    """images/s of the encoder's forward pass on uint8 pixels already on the device (no decode, no transfer)."""
    import torch

    from pipeline.encode.encoder import ClipEncoder
    from pipeline.encode.model import resolve_model

    encoder = ClipEncoder(resolve_model(arch, str(checkpoint)).on(device, precision))
    h, w = encoder.prep.size
    pixels = torch.randint(0, 256, (batch, h, w, 3), dtype=torch.uint8, device=device)
    for _ in range(2):
        encoder.encode_pixel_tensor(pixels)  # warm-up (kernels, allocator)
    done, start = 0, time.perf_counter()
    while done < 3 * batch or time.perf_counter() - start < seconds:
        encoder.encode_pixel_tensor(pixels)  # ends with a copy to the host: synchronised
        done += batch
    del encoder
    if device == "cuda":
        torch.cuda.empty_cache()
    return done / (time.perf_counter() - start)


def _jpeg(args: tuple[int, int, int]) -> bytes:
    """One JPEG of ``size`` from a random crop of a bundled photo (or noise when none can be read)."""
    from PIL import Image

    seed, width, height = args
    rng = np.random.default_rng(seed)
    try:
        from skimage import data

        photo = Image.fromarray(np.asarray(getattr(data, PHOTOS[seed % len(PHOTOS)])())).convert("RGB")
        pw, ph = photo.size
        cw, ch = int(pw * rng.uniform(0.5, 1)), int(ph * rng.uniform(0.5, 1))
        x, y = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch)).resize((width, height), Image.BICUBIC)
    except Exception:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_corpus(directory: Path, count: int, unique: int) -> dict:
    """``count`` JPEG files cycling over ``unique`` distinct ones of JPEG_SIZES (decode cost is per file)."""
    directory.mkdir(parents=True, exist_ok=True)
    jobs = [(i, *JPEG_SIZES[i % len(JPEG_SIZES)]) for i in range(min(unique, count))]
    with Pool(min(16, os.cpu_count() or 1)) as pool:
        blobs = pool.map(_jpeg, jobs)
    total = 0
    for i in range(count):
        blob = blobs[i % len(blobs)]
        sub = directory / f"part{i // 2048:03d}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:06d}.jpg").write_bytes(blob)
        total += len(blob)
    pixels = [w * h for w, h in JPEG_SIZES]
    return {
        "files": count,
        "unique": len(blobs),
        "mean_kib": round(total / count / 1024, 1),
        "max_mp": max(pixels) / 1e6,
    }


def run_embed_once(corpus: Path, out: Path, arch: str, checkpoint: Path, decode: str, batch: int, cpu: bool) -> dict:
    import shutil

    import pipeline.embed as embed_module
    from pipeline.cli import compose

    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"input.path={corpus}",
        f"output.path={out}",
        f"model.name={arch}",
        f"model.pretrained={checkpoint}",
        f"batch_size={batch}",
        "modality=image",
        "progress=false",
        f"decode.device={'cpu' if cpu else decode}",
    ]
    real = embed_module.decode_in_encoder
    if cpu and decode == "cuda":  # the dry run: the same plan, images decoded by the encoder on CPU tensors
        embed_module.decode_in_encoder = lambda *args: True
    try:
        summary = embed_module.run_embed(compose("embed", overrides))
    finally:
        embed_module.decode_in_encoder = real
    return {
        "rows": summary.rows,
        "errors": summary.errors,
        "wall_s": summary.wall_seconds,
        "images_per_s": summary.rows_per_second,
        "steady_images_per_s": summary.steady_rows_per_second,
    }


def exact_search_torch(vectors: np.ndarray, queries: int, k: int, device: str) -> dict:
    """Brute-force top-k with torch (fp16 on the GPU): the reference for FAISS's numbers."""
    import torch

    dtype = torch.float16 if device == "cuda" else torch.float32
    base = torch.from_numpy(vectors).to(device, dtype)
    q = base[torch.randperm(len(base), generator=torch.Generator().manual_seed(0))[:queries].to(device)]
    torch.topk(q[:64] @ base.T, k)  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for chunk in q.split(1024):
        torch.topk(chunk @ base.T, k).indices.cpu()
    seconds = time.perf_counter() - start
    return {"rows": len(base), "queries": queries, "k": k, "qps": round(queries / seconds, 1), "dtype": str(dtype)}


def run_index_once(vectors_dir: Path, out: Path, device: str, factory: str, train_sample: int) -> dict:
    import shutil

    from pipeline.cli import compose
    from pipeline.index.builder.build import run_index

    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"input.path={vectors_dir}",
        f"index.path={out}",
        f"index.device={device}",
        f"index.factory='{factory}'",  # quoted: Hydra reads a bare comma as a list
        f"index.train_sample={train_sample}",
        "progress=false",
    ]
    summary = run_index(compose("index", overrides))
    recall = summary.recall
    return {
        "device": summary.device,
        "factory": summary.factory,
        "ntotal": summary.ntotal,
        "phases_s": summary.phases,
        "seconds": summary.seconds,
        "recall": getattr(recall, "__dict__", recall),
        "qps": summary.qps,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="dry run on the CPU at a tiny size (the test suite's)")
    parser.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "bench" / "results" / "gpu-check"))
    parser.add_argument("--work", default=None, help="scratch folder (default: <out>/../gpu-check-work)")
    parser.add_argument("--images", type=int, default=None, help="JPEGs for the embed runs (20000; --cpu 48)")
    parser.add_argument("--index-rows", type=int, default=None, help="vectors for the index (1M; --cpu 5000)")
    parser.add_argument("--seconds", type=float, default=None, help="seconds per ceiling measurement (3; --cpu 0)")
    args = parser.parse_args(argv)
    cpu = args.cpu
    import torch

    if not cpu and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (use --cpu for the dry run)")
    device = "cpu" if cpu else "cuda"
    out = Path(args.out)
    work = Path(args.work or (out.parent / "gpu-check-work"))
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    global _OUT
    _OUT = out
    images = args.images or (48 if cpu else 20000)
    index_rows = args.index_rows or (5000 if cpu else 1_000_000)
    seconds = args.seconds if args.seconds is not None else (0.0 if cpu else 3.0)
    archs = [register_tiny()] if cpu else ["ViT-B-32", "ViT-L-14"]
    precisions = ["fp32", "bf16"] if cpu else ["fp16", "bf16"]
    batches = [8] if cpu else [256, 512, 1024]
    result: dict = {
        "mode": "cpu dry run" if cpu else "gpu",
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["environment"] = environment(device)
    checkpoints = {}

    with step(result, "ceilings") as entry:
        for arch in archs:
            checkpoints[arch] = save_checkpoint(arch, work / f"{arch}-random.pt")
            for precision in precisions:
                for batch in batches if arch != "ViT-L-14" else batches[:2]:
                    rate = measure_ceiling(checkpoints[arch], arch, device, precision, batch, seconds)
                    entry[f"{arch} {precision} b{batch}"] = round(rate, 1)

    with step(result, "corpus") as entry:
        corpus = work / f"corpus-{images}"
        entry.update(make_corpus(corpus, images, unique=min(images, 16 if cpu else 1000)))

    embed_batch = batches[-1] if cpu else 512
    for arch in archs:
        for decode in ("cpu", "cuda"):
            if arch == "ViT-L-14" and decode == "cpu":
                continue  # the decode wall is ViT-B-32's question; ViT-L-14 is compute-bound
            with step(result, f"embed {arch} decode={decode}") as entry:
                entry.update(
                    run_embed_once(corpus, work / "embed-out", arch, checkpoints[arch], decode, embed_batch, cpu)
                )
                ceiling = result["ceilings"].get(f"{arch} {precisions[0]} b{embed_batch}")
                if ceiling and entry.get("steady_images_per_s"):
                    entry["share_of_ceiling"] = round(entry["steady_images_per_s"] / ceiling, 3)

    with step(result, "index vectors") as entry:
        from tests.synthetic import ClusteredSpec, iter_clustered, write_npy_folder

        spec = ClusteredSpec(dim=512) if not cpu else ClusteredSpec(dim=64, clusters=50, groups=5, rank=16)
        vectors_dir = work / f"vectors-{index_rows}"
        if not vectors_dir.exists():
            write_npy_folder(vectors_dir, iter_clustered(index_rows, spec), rows_per_file=100_000)
        vectors = np.concatenate([np.load(f) for f in sorted(vectors_dir.glob("*.npy"))])
        entry.update({"rows": len(vectors), "dim": vectors.shape[1]})

    with step(result, "exact search torch") as entry:
        entry.update(exact_search_torch(vectors, 1000 if cpu else 10000, 10, device))

    with step(result, "latent index") as entry:
        import faiss

        faiss_device = "cuda" if not cpu and faiss.get_num_gpus() > 0 else "cpu"
        factory = "IVF64,Flat" if cpu else "IVF4096,Flat"
        entry.update(run_index_once(vectors_dir, work / "index-out", faiss_device, factory, 2000 if cpu else 200_000))

    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    save(result)
    print(render_markdown(result))
    return result


def render_markdown(r: dict) -> str:
    env = r["environment"]
    lines = [
        f"GPU check ({r['mode']}, {r['started']}): {env.get('gpu', 'CPU')}, {env['cpus']} CPUs, torch {env['torch']}, "
        f"ray {env['ray']}, open_clip {env['open_clip']}, faiss {env['faiss']}",
        "",
        "| measure | value |",
        "| --- | --- |",
    ]
    for key, value in r.get("ceilings", {}).items():
        if key not in ("seconds", "error", "traceback"):
            lines.append(f"| forward-only ceiling {key} | {value:,.0f} images/s |")
    for name, entry in r.items():
        if name.startswith("embed ") and isinstance(entry, dict):
            if "error" in entry:
                lines.append(f"| {name} | failed: {entry['error']} |")
                continue
            share = f", {entry['share_of_ceiling']:.0%} of the ceiling" if "share_of_ceiling" in entry else ""
            lines.append(
                f"| latent {name} ({entry['rows']:,} JPEGs) | "
                f"{entry['steady_images_per_s']:,.0f} images/s steady{share}; {entry['wall_s']:.1f} s wall |"
            )
    search = r.get("exact search torch", {})
    if "qps" in search:
        lines.append(
            f"| exact top-{search['k']} search, torch {search['dtype']} on {search['rows']:,} | "
            f"{search['qps']:,.0f} queries/s |"
        )
    index = r.get("latent index", {})
    if "phases_s" in index:
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in index["phases_s"].items())
        lines.append(
            f"| latent index {index['factory']} on {index['device']} ({index['ntotal']:,} vectors) | {phases} |"
        )
    for name, entry in r.items():
        if isinstance(entry, dict) and "error" in entry and not name.startswith("embed "):
            lines.append(f"| {name} | failed: {entry['error']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
