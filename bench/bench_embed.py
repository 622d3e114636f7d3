"""Embed benchmark: latent against the model's compute ceiling and against clip-retrieval.

    python bench/bench_embed.py [--images 1000] [--scale 10] [--peers ../shared/peers]

On N JPEGs of about 400x300 (crops of real photos), with ViT-B-32 and random weights saved to a
local checkpoint, in one run:
  1. the ceiling: a forward-only loop of the same model on pre-decoded tensors (images/s);
  2. `latent embed` on the corpus: steady-state images/s, wall time, peak RSS of its process tree;
  3. clip-retrieval's `clip-retrieval inference` on the same folder and weights: wall time, and
     per-image cosine between its vectors and latent's;
  4. `latent embed` on a corpus --scale times larger: peak RSS (memory must stay flat).
Writes bench/results/embed.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def make_corpus(directory: Path, count: int, seed: int = 0) -> Path:
    """``count`` distinct ~400x300 JPEGs: random crops, flips and tints of scikit-image's photos."""
    from PIL import Image, ImageOps
    from skimage import data

    if directory.exists() and len(list(directory.glob("*.jpg"))) == count:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    names = [
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "hubble_deep_field",
        "immunohistochemistry",
        "colorwheel",
        "retina",
        "camera",
        "coins",
        "moon",
        "brick",
        "grass",
        "gravel",
        "clock",
        "page",
    ]
    photos = [Image.fromarray(np.asarray(getattr(data, n)())).convert("RGB") for n in names]
    rng = np.random.default_rng(seed)
    for i in range(count):
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        image = photo.crop((x, y, x + cw, y + ch)).resize((400, 300), Image.BICUBIC)
        if rng.random() < 0.5:
            image = ImageOps.mirror(image)
        tint = np.clip(np.asarray(image, np.float32) * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        Image.fromarray(tint).save(directory / f"img{i:06d}.jpg", quality=90)
    return directory


def make_checkpoint(path: Path, arch: str) -> Path:
    import open_clip
    import torch

    if not path.exists():
        torch.manual_seed(0)
        torch.save(open_clip.create_model(arch, pretrained=None).state_dict(), path)
    return path


def measure_ceiling(corpus: Path, checkpoint: Path, arch: str, batch: int, limit: int = 512) -> float:
    """images/s of encode_pixels alone on pre-decoded, pre-resized tensors (the same model, same threads)."""
    import torch
    from PIL import Image

    from pipeline.encode.encoder import ClipEncoder
    from pipeline.encode.model import resolve_model

    device, precision = ("cuda", "fp16") if torch.cuda.is_available() else ("cpu", "fp32")  # as latent decides
    encoder = ClipEncoder(resolve_model(arch, str(checkpoint)).on(device, precision), threads=os.cpu_count())
    files = sorted(corpus.glob("*.jpg"))[:limit]
    pixels = np.stack([encoder.prep.prepare(Image.open(f)) for f in files])
    encoder.encode_pixels(pixels[:batch])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(pixels), batch):
        encoder.encode_pixels(pixels[i : i + batch])
    return len(pixels) / (time.perf_counter() - start)


class PeakRss:
    """Peak summed memory of a process and all its descendants, sampled every ``interval`` seconds.

    ``peak`` sums RSS, which counts pages shared between processes (Ray's object store, torch's
    libraries) once per process; ``peak_pss`` sums PSS, which splits shared pages among their users.
    """

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.peak_pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    def _run(self, interval: float) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss = pss = 0
                for proc in procs:
                    with contextlib.suppress(psutil.Error):
                        info = proc.memory_full_info()
                        rss, pss = rss + info.rss, pss + info.pss
                self.peak, self.peak_pss = max(self.peak, rss), max(self.peak_pss, pss)
            except psutil.Error:
                return
            time.sleep(interval)

    def stop(self) -> tuple[int, int]:
        self._stop.set()
        self._thread.join()
        return self.peak, self.peak_pss


class FirstShard:
    """Seconds from ``start`` until the first shard is committed in ``out`` (polled every 0.1 s)."""

    def __init__(self, out: Path, start: float) -> None:
        self.out, self.start, self.seconds = out, start, None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and self.seconds is None:
            if self.out.exists() and any(self.out.glob("*.parquet")):
                self.seconds = round(time.perf_counter() - self.start, 2)
            time.sleep(0.1)

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.seconds


def run_latent(corpus: Path, out: Path, checkpoint: Path, arch: str, batch: int, rows_per_shard: int = 128) -> dict:
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    cmd = [
        str(Path(sys.executable).parent / "latent"),  # the console script of the running environment
        "embed",
        f"input.path={corpus}",
        f"output.path={out}",
        f"model.name={arch}",
        f"model.pretrained={checkpoint}",
        f"batch_size={batch}",
        f"output.rows_per_shard={rows_per_shard}",
        "output.dtype=float32",
        "progress=false",
    ]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    rss = PeakRss(proc.pid)
    first = FirstShard(out, start)
    output, _ = proc.communicate()
    wall = time.perf_counter() - start
    first_shard_s = first.stop()
    peak, peak_pss = rss.stop()
    if proc.returncode != 0:
        sys.exit(f"latent embed failed:\n{output[-3000:]}")
    summary = json.loads((out / "_latent" / "summary.json").read_text())
    steady = summary.get("steady_rows_per_second") or 0.0
    return {
        "wall_s": round(wall, 2),
        "first_shard_s": first_shard_s,
        # start-up: until the first shard, less the time one shard takes at the steady pace
        "startup_s": round(first_shard_s - rows_per_shard / steady, 2) if first_shard_s and steady else None,
        "peak_rss_gib": round(peak / 2**30, 2),
        "peak_pss_gib": round(peak_pss / 2**30, 2),
        **summary,
    }


def run_clip_retrieval(peers: Path, corpus: Path, out: Path, checkpoint: Path, arch: str, batch: int) -> dict:
    script = peers / "clip_retrieval_embed.sh"
    result = subprocess.run(
        ["bash", str(script), str(corpus), str(out), str(checkpoint), arch, str(batch)], capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"clip-retrieval failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_vectors(latent_out: Path, peer: dict) -> dict:
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    from pipeline.io.shards import arrow_to_vectors

    table = pads.dataset(str(latent_out), format="parquet").to_table(columns=["id", "image_embedding"])
    ours = dict(zip(table.column("id").to_pylist(), arrow_to_vectors(table.column("image_embedding"))))
    cosines = []
    emb_files = sorted(Path(peer["embeddings"]).glob("*.npy"))
    for emb_file in emb_files:
        vectors = np.load(emb_file).astype(np.float32)
        meta = pq.read_table(
            Path(peer["metadata"]) / emb_file.name.replace("img_emb_", "metadata_").replace(".npy", ".parquet")
        )
        for path, vector in zip(meta.column("image_path").to_pylist(), vectors):
            mine = ours[Path(path).name]
            cosines.append(float(mine @ vector / (np.linalg.norm(mine) * np.linalg.norm(vector))))
    cosines = np.asarray(cosines)
    return {
        "compared": len(cosines),
        "min_cosine": round(float(cosines.min()), 6),
        "mean_cosine": round(float(cosines.mean()), 6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--scale", type=int, default=10, help="the large corpus is this many times larger (0: skip)")
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--peers", default=os.environ.get("LATENT_PEERS", str(REPO.parent / "shared" / "peers")))
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "embed-work"))
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(work / f"corpus-{args.images}", args.images)
    checkpoint = make_checkpoint(work / f"{args.arch}-random.pt", args.arch)
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "gpu": gpu},
        "images": args.images,
        "arch": args.arch,
        "batch": args.batch,
    }

    result["ceiling_images_per_s"] = round(measure_ceiling(corpus, checkpoint, args.arch, args.batch), 2)
    latent = run_latent(corpus, work / "latent-out", checkpoint, args.arch, args.batch)
    result["latent"] = latent
    result["steady_vs_ceiling"] = round(latent["steady_rows_per_second"] / result["ceiling_images_per_s"], 3)

    peers = Path(args.peers)
    if (peers / "clip_retrieval_embed.sh").exists():
        peer = run_clip_retrieval(peers, corpus, work / "clip-retrieval-out", checkpoint, args.arch, args.batch)
        result["clip_retrieval"] = peer
        result["speedup_vs_clip_retrieval"] = round(peer["wall_s"] / latent["wall_s"], 2)
        result["agreement"] = compare_vectors(work / "latent-out", peer)
    else:
        result["clip_retrieval"] = f"skipped: no peers scripts at {peers}"

    if args.scale:
        big = make_corpus(work / f"corpus-{args.images * args.scale}", args.images * args.scale)
        result["latent_x_scale"] = run_latent(big, work / "latent-out-big", checkpoint, args.arch, args.batch)
        result["rss_ratio_scale_vs_1x"] = round(result["latent_x_scale"]["peak_rss_gib"] / latent["peak_rss_gib"], 2)
        result["pss_ratio_scale_vs_1x"] = round(result["latent_x_scale"]["peak_pss_gib"] / latent["peak_pss_gib"], 2)

    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "embed.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(render_markdown(result))


def render_markdown(r: dict) -> str:
    lines = [
        f"| measure ({r['images']} JPEGs ~400x300, {r['arch']}, batch {r['batch']}, {r['machine']['cpus']} CPUs) "
        "| value |",
        "| --- | --- |",
        f"| forward-only ceiling (pre-decoded tensors) | {r['ceiling_images_per_s']:.1f} images/s |",
        f"| latent steady state | {r['latent']['steady_rows_per_second']:.1f} images/s "
        f"({r['steady_vs_ceiling']:.2f}x the ceiling) |",
        f"| latent wall time (CLI, Ray start-up included) | {r['latent']['wall_s']:.1f} s |",
        f"| latent first shard / start-up (first shard less one shard at the steady pace) | "
        f"{r['latent']['first_shard_s']} s / {r['latent']['startup_s']} s |",
        f"| latent peak memory, all processes: RSS (shared pages counted per process) / PSS | "
        f"{r['latent']['peak_rss_gib']:.2f} / {r['latent']['peak_pss_gib']:.2f} GiB |",
    ]
    if isinstance(r.get("clip_retrieval"), dict):
        lines += [
            f"| clip-retrieval wall time | {r['clip_retrieval']['wall_s']:.1f} s "
            f"(latent {r['speedup_vs_clip_retrieval']:.2f}x faster) |",
            f"| vectors, latent vs clip-retrieval | min cosine {r['agreement']['min_cosine']:.5f} over "
            f"{r['agreement']['compared']} images |",
        ]
    if "latent_x_scale" in r:
        big = r["latent_x_scale"]
        lines.append(
            f"| latent peak RSS / PSS at {big['rows']} images | "
            f"{big['peak_rss_gib']:.2f} / {big['peak_pss_gib']:.2f} GiB "
            f"({r['rss_ratio_scale_vs_1x']:.2f}x / {r['pss_ratio_scale_vs_1x']:.2f}x the 1x peak) |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
