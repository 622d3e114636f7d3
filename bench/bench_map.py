"""`make bench-map`: the whole `latent map` on the index benchmark's seeded clustered corpus (groups known),
umap-learn's full fit side by side, and the map view of every point in headless Chromium.

    python bench/bench_map.py                 # 1M x 512 (the target run)
    python bench/bench_map.py --n 100000 --full-umap 20000 --quality 20000   # a quick run
    python bench/bench_map.py --corpus nested --quality 10000 --full-umap 0 --skip-page   # issue 21's corpus

``--corpus nested``: tests/map/corpora.py's groups of sub-groups (12 x 4, unit vectors, 512-d) instead of the
clustered corpus; reported besides: each level's region count and ARI against the groups and the sub-groups.

Steps: write the corpus (tests/synthetic.py, ClusteredSpec() as bench-index) as float32 .npy
shards, with each row's known group; run `latent map` as a subprocess (wall time; peak memory: the
largest sum of RSS and of PSS over its process tree, Ray workers included, polled every 0.2 s, and the largest
single process); adjusted Rand index of its coarse regions against the groups; umap-learn's own full
fit (its NN-descent, all cores) of a `--full-umap` row sample, timed, and both maps' neighbourhood
preservation on that sample; then `latent index` (SQ8, for the server) and `latent serve` of the map,
opened in headless Chromium: time from navigation to the first drawn WebGL frame, bytes per point.
JSON goes to bench/results/map-<n>.json (map-nested-<n>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.map.layout import sample_rows  # noqa: E402
from pipeline.map.quality import neighbourhood_preservation  # noqa: E402
from pipeline.map.store import MapDirectory  # noqa: E402
from tests.map.corpora import nested_gaussians_chunks  # noqa: E402
from tests.synthetic import ClusteredSpec, iter_clustered_groups  # noqa: E402

ROWS_PER_FILE = 50_000


def write_corpus(work: Path, n: int, spec: ClusteredSpec, corpus: str = "clustered") -> tuple[Path, np.ndarray]:
    """The corpus as .npy shards and each row's group (``nested``: (groups, sub-groups), n x 2)."""
    tag = "" if corpus == "clustered" else f"{corpus}-"
    data, groups_file = work / f"emb-{tag}{n}", work / f"groups-{tag}{n}.npy"
    if groups_file.exists():
        return data, np.load(groups_file)
    data.mkdir(parents=True, exist_ok=True)
    if corpus == "nested":
        chunks = ((v, np.stack([g, s], 1)) for v, g, s in nested_gaussians_chunks(n, spec.dim, chunk=ROWS_PER_FILE))
    else:
        chunks = iter_clustered_groups(n, spec)
    groups, pending, file = [], [], 0
    for vectors, group in chunks:
        groups.append(group)
        pending.append(vectors)
        while sum(len(p) for p in pending) >= ROWS_PER_FILE:
            block = np.concatenate(pending)
            np.save(data / f"emb_{file:05d}.npy", block[:ROWS_PER_FILE])
            pending, file = [block[ROWS_PER_FILE:]], file + 1
    rest = np.concatenate(pending)
    if len(rest):
        np.save(data / f"emb_{file:05d}.npy", rest)
    np.save(groups_file, np.concatenate(groups))
    return data, np.load(groups_file)


def run_measured(command: list[str], log: Path) -> dict:
    """Wall seconds, exit code, peak summed RSS of the process tree, peak single-process RSS, and peak summed
    PSS (proportional set size: a shared page, such as Ray's object store mapped by every worker, counts
    once over the tree instead of once per process, so the sum is the tree's physical memory)."""
    start = time.perf_counter()
    peak_sum = peak_one = peak_pss = 0
    with open(log, "w") as out:
        process = psutil.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                full = [p.memory_full_info() for p in tree]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            rss = [m.rss for m in full]
            peak_sum, peak_one = max(peak_sum, sum(rss)), max(peak_one, max(rss))
            peak_pss = max(peak_pss, sum(m.pss for m in full))
            time.sleep(0.2)
    return {
        "command": shlex.join(command),
        "wall_s": round(time.perf_counter() - start, 1),
        "returncode": process.returncode,
        "peak_rss_tree_bytes": peak_sum,
        "peak_rss_process_bytes": peak_one,
        "peak_pss_tree_bytes": peak_pss,
    }


def global_rows(ids: list[str]) -> np.ndarray:
    """`emb_00003:17` -> 3 * ROWS_PER_FILE + 17 (the .npy input's default ids)."""
    out = np.empty(len(ids), np.int64)
    for i, id in enumerate(ids):
        name, row = id.split(":")
        out[i] = int(name.split("_")[1]) * ROWS_PER_FILE + int(row)
    return out


def full_umap(data: Path, n: int, rows: np.ndarray, xy_ours: np.ndarray) -> dict:
    import umap

    vectors = np.concatenate([np.load(f, mmap_mode="r") for f in sorted(data.glob("*.npy"))])[rows]
    started = time.perf_counter()
    xy = umap.UMAP(n_neighbors=15, metric="cosine", n_jobs=-1, low_memory=True).fit_transform(vectors)
    seconds = time.perf_counter() - started
    return {
        "rows": len(rows),
        "umap_learn_seconds": round(seconds, 1),
        "umap_learn_preservation": neighbourhood_preservation(vectors, xy, queries=2000),
        "latent_map_preservation": neighbourhood_preservation(vectors, xy_ours, queries=2000),
    }


def all_rows_preservation(data: Path, xy: np.ndarray, queries: int = 2000) -> dict:
    """The issue's own figure at full scale: of 2,000 seeded rows, the share of each one's 10 nearest among all
    n rows (exact, FAISS) found among its 10 nearest on the map (all n points)."""
    vectors = np.concatenate([np.load(f, mmap_mode="r") for f in sorted(data.glob("*.npy"))])
    started = time.perf_counter()
    found = neighbourhood_preservation(vectors, xy, queries=queries)
    return {"queries": queries, "k": 10, "preservation": found, "seconds": round(time.perf_counter() - started, 1)}


def page_timing(work: Path, data: Path, out: Path, n: int) -> dict:
    """Serve the map (with an SQ8 index of the same rows) and open it in headless Chromium."""
    index = work / f"idx-{n}"
    latent = [sys.executable, "-m", "pipeline.cli"]
    if not (index / "index.json").exists():
        built = run_measured(
            [*latent, "index", f"input.path={data}", f"index.path={index}", "index.factory=SQ8", "progress=false"],
            work / "index.log",
        )
        if built["returncode"]:
            return {"error": "latent index failed", **built}
    log = open(work / "serve.log", "w")  # noqa: SIM115  (closed in finally, after the server)
    server = subprocess.Popen(
        [*latent, "serve", f"index.path={index}", f"map.path={out}", "port=0", "warmup=false"],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    try:
        url = None
        for line in server.stdout:
            if "http://" in line:
                url = line.split("http://")[1].split()[0].rstrip("/")
                break
        if url is None:
            return {"error": "latent serve did not start (see serve.log)"}
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--headless", "--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            runs = []
            for _ in range(3):
                page.goto(f"http://{url}/map")
                page.wait_for_function(
                    "() => window.latentMap && window.latentMap.firstFrameMs !== null", timeout=120000
                )
                runs.append(
                    page.evaluate(
                        "() => ({first: latentMap.firstFrameMs, bytes: latentMap.bytes, n: latentMap.points})"
                    )
                )
            page.screenshot(path=str(work / f"map-view-{n}.png"))
            browser.close()
        return {
            "first_frame_ms": [round(r["first"]) for r in runs],
            "points": runs[0]["n"],
            "bytes_per_point": runs[0]["bytes"] / runs[0]["n"],
        }
    finally:
        server.terminate()
        server.wait(timeout=60)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--landmarks", type=int, default=50_000)
    parser.add_argument(
        "--quality", type=int, default=100_000, help="rows of map.json's quality sample (and its reference fit)"
    )
    parser.add_argument(
        "--full-umap", type=int, default=200_000, help="rows of umap-learn's side-by-side fit (0: skip)"
    )
    parser.add_argument("--work", default="/tmp/latent-bench-map")
    parser.add_argument("--skip-page", action="store_true")
    parser.add_argument("--corpus", choices=("clustered", "nested"), default="clustered")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    spec = ClusteredSpec()
    data, groups = write_corpus(work, args.n, spec, args.corpus)
    tag = "" if args.corpus == "clustered" else f"{args.corpus}-"
    out = work / f"map-{tag}{args.n}"
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "map",
        f"input.path={data}",
        f"output.path={out}",
        "map.mode=overwrite",
        f"map.landmarks={args.landmarks}",
        f"quality.sample={args.quality}",
        "progress=false",
    ]
    print("latent map ...", flush=True)
    run = run_measured(command, work / "map.log")
    if run["returncode"]:
        print((work / "map.log").read_text()[-3000:])
        raise SystemExit("latent map failed")
    found = MapDirectory(out)
    levels = [f"cluster_{level}" for level in range(len(found.info.clusters))]
    points = found.points(["id", "x", "y", *levels])
    rows = global_rows(points.column("id").to_pylist())
    from sklearn.metrics import adjusted_rand_score

    xy = np.zeros((args.n, 2), np.float32)
    xy[rows] = np.stack([points.column("x").to_numpy(), points.column("y").to_numpy()], 1)
    raw = args.n * spec.dim * 4
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "n": args.n,
        "dim": spec.dim,
        "groups": "12 x 4" if args.corpus == "nested" else spec.groups,
        "landmarks": args.landmarks,
        "latent_map": run,
        "raw_float32_bytes": raw,
        "rss_tree_over_raw": round(run["peak_rss_tree_bytes"] / raw, 2),
        "rss_process_over_raw": round(run["peak_rss_process_bytes"] / raw, 2),
        "pss_tree_over_raw": round(run["peak_pss_tree_bytes"] / raw, 2),
        "map_json": {"quality": found.info.quality, "timings": found.info.timings, "clusters": found.info.clusters},
    }
    if args.corpus == "nested":  # each level against the groups and the sub-groups
        report["levels"] = [
            {
                "regions": len(np.unique(points.column(level).to_numpy())),
                "ari_groups": adjusted_rand_score(groups[rows, 0], points.column(level).to_numpy()),
                "ari_sub_groups": adjusted_rand_score(groups[rows, 1], points.column(level).to_numpy()),
            }
            for level in levels
        ]
    else:
        report["ari_coarse_vs_groups"] = adjusted_rand_score(groups[rows], points.column("cluster_0").to_numpy())
    results = REPO / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)

    def save() -> None:  # after every stage: a run cut short keeps what it measured
        (results / f"map-{tag}{args.n}.json").write_text(json.dumps(report, indent=2))

    print(json.dumps(report, indent=2), flush=True)
    save()
    print("preservation among all rows ...", flush=True)
    report["all_rows"] = all_rows_preservation(data, xy)
    print(json.dumps(report["all_rows"], indent=2), flush=True)
    save()
    if not args.skip_page:
        print("map view ...", flush=True)
        report["page"] = page_timing(work, data, out, args.n)
        print(json.dumps(report["page"], indent=2), flush=True)
        save()
    if args.full_umap:
        print("umap-learn full fit ...", flush=True)
        sample = sample_rows(args.n, args.full_umap, 12345)
        report["side_by_side"] = full_umap(data, args.n, sample, xy[sample])
        print(json.dumps(report["side_by_side"], indent=2), flush=True)
        save()


if __name__ == "__main__":
    main()
