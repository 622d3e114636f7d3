"""`make bench-serve-images`: `latent serve`'s memory and latency under bursts of large query images.

    python bench/bench_serve_images.py                 # ViT-B-32 (random weights) index, 8 concurrent images
    python bench/bench_serve_images.py --burst 16

Starts `latent serve` (as bench_serve.py does: a 20k-vector index carrying ViT-B-32's fingerprint, so
image queries run the real 224-pixel image tower, offline) in a subprocess and sends bursts of
`--burst` concurrent image queries: the issue's decompression bomb (a ~30 KB PNG of 9000x9000 pixels),
16 MP PNGs (4000x4000, under max_query_pixels) and 24 MP JPEG photos (6000x4000, decoded reduced).
For each burst: the answers' status codes, client-side latency, the server's peak resident memory
during the burst (VmRSS sampled every 10 ms) and its resident memory after. One run with the old limit
(max_query_pixels at the old default, 89 MP) shows what the bomb cost when it was decoded.
JSON to bench/results/serve-images-<time>.json.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import platform
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_serve import Server, build_text_index  # noqa: E402


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def encode(image, format: str, **kw) -> str:
    buf = io.BytesIO()
    image.save(buf, format=format, **kw)
    return base64.b64encode(buf.getvalue()).decode()


def images() -> dict[str, str]:
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    return {
        "bomb PNG 9000x9000": encode(Image.new("1", (9000, 9000), 1), "PNG"),
        "PNG 4000x4000": encode(photo.resize((250, 250)).resize((4000, 4000), Image.Resampling.NEAREST), "PNG"),
        "JPEG 6000x4000": encode(photo.resize((6000, 4000)), "JPEG", quality=90),
    }


def burst(server: Server, name: str, image: str, n: int) -> dict:
    import httpx

    pid = server.process.pid
    before = rss_mb(pid)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.01)

    answers: list[tuple[int, float]] = []

    def one(client: httpx.Client) -> None:
        start = time.perf_counter()
        response = client.post("/search", json={"image": image, "k": 5})
        answers.append((response.status_code, time.perf_counter() - start))

    sampler = threading.Thread(target=sample)
    sampler.start()
    with httpx.Client(base_url=server.url, timeout=600) as client:
        threads = [threading.Thread(target=one, args=(client,)) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    time.sleep(0.5)
    done.set()
    sampler.join()
    statuses: dict[str, int] = {}
    for status, _ in answers:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    latencies = sorted(s for _, s in answers)
    row = {
        "images": name,
        "burst": n,
        "body_kb": round(len(image) * 3 / 4 / 1024),
        "statuses": statuses,
        "latency_s_median": round(latencies[len(latencies) // 2], 3),
        "latency_s_max": round(latencies[-1], 3),
        "rss_mb_before": round(before),
        "rss_mb_peak": round(peak[0]),
        "rss_mb_after": round(rss_mb(pid)),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    import httpx
    from PIL import Image

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--burst", type=int, default=8, help="concurrent image queries per burst")
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "work"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    index = build_text_index(work, args.model)
    queries = images()
    small = {"image": encode(Image.new("RGB", (300, 200), (90, 120, 200)), "JPEG")}
    runs = {
        "defaults (max_decodes=2, max_query_pixels=16777216)": [],
        "max_decodes=burst": [f"max_decodes={args.burst}"],
        "old pixel limit (max_query_pixels=89478485, max_decodes=burst)": [
            "max_query_pixels=89478485",
            f"max_decodes={args.burst}",
        ],
    }
    results = []
    for label, overrides in runs.items():
        print(f"--- {label}", flush=True)
        server = Server(index, "model.device=cpu", "max_body_bytes=67108864", *overrides)
        try:
            httpx.post(f"{server.url}/search", json=small, timeout=300).raise_for_status()  # warm
            names = ["bomb PNG 9000x9000"] if label.startswith("old") else list(queries)
            for name in names:
                results.append({"server": label, **burst(server, name, queries[name], args.burst)})
        finally:
            server.stop()
    out = REPO / "bench" / "results" / f"serve-images-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "results": results}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
