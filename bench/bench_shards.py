"""Sharded and on-disk indexes, and Ray Serve against the single-process server (issue 11).

    python bench/bench_shards.py                 # 1M x 512
    python bench/bench_shards.py --n 100000      # smaller

Steps, on the benchmark corpus (tests/synthetic.py, as bench_index.py writes it):
1. `latent index` with one shard and with --shards shards (same factory): build wall time, peak RSS;
   then, here, recall@10 and batch QPS of both at the one-shard index's tuned parameters, and whether
   the answers are identical.
2. The one-shard index's inverted lists written to an on-disk lists file (pipeline.index.store.ondisk): batch
   QPS in memory, on disk with a cold page cache (this file's pages dropped with posix_fadvise
   DONTNEED, nothing else evicted) and warm.
3. `latent serve` over the sharded index, single process and backend=ray: p50/p99 latency and
   throughput of vector queries with 1 and 32 clients (bench_serve.py's load generator).
JSON goes to bench/results/shards-<n>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_index import QUERIES, K, dataset, run_latent  # noqa: E402
from bench_serve import Server, _load  # noqa: E402

from pipeline.index.builder.tune import measure_qps  # noqa: E402
from pipeline.index.nodes import apply_search_params  # noqa: E402
from pipeline.index.recall import GroundTruth, recall_at_k, without_self  # noqa: E402
from pipeline.index.store import ondisk  # noqa: E402
from pipeline.index.store.directory import IndexDirectory  # noqa: E402
from tests.synthetic import ClusteredSpec  # noqa: E402


def drop_page_cache(path: Path) -> None:
    """Evict one file's pages from the page cache (the rest of the system's cache is left alone)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def exact_truth(data: Path, queries: np.ndarray) -> np.ndarray:
    truth = GroundTruth(queries, K, faiss.METRIC_INNER_PRODUCT)
    first = 0
    for file in sorted(data.glob("*.npy")):
        x = np.load(file, mmap_mode="r")
        truth.add(np.ascontiguousarray(x, dtype=np.float32), np.arange(first, first + len(x)))
        first += len(x)
    return truth.labels()


def interleaved_qps(indexes: dict[str, faiss.Index], queries: np.ndarray, rounds: int) -> dict[str, dict]:
    """Batch QPS of each index, measured in turn for ``rounds`` rounds (so that a busy moment of the machine
    hits them alike): the best and the median round of each."""
    seen: dict[str, list[float]] = {name: [] for name in indexes}
    for index in indexes.values():
        index.search(queries, K + 1)  # warm: mapped pages in, threads up
    for _ in range(rounds):
        for name, index in indexes.items():
            started = time.perf_counter()
            index.search(queries, K + 1)
            seen[name].append(len(queries) / (time.perf_counter() - started))
    return {name: {"best": max(v), "median": float(np.median(v))} for name, v in seen.items()}


def serve_load(index: Path, bodies: list[dict], clients: int, seconds: float, *overrides: str) -> dict:
    server = Server(index, "model.device=cpu", *overrides)
    try:
        return asyncio.run(_load(server.url, bodies, clients, 2.0, seconds))
    finally:
        server.stop()


def build(args, data: Path, extra: list[str], tag: str) -> tuple[dict, IndexDirectory]:
    """`latent index` (bench_index.run_latent), or with --reuse an index this script built before."""
    out, status = args.work / f"latent-{args.n}{tag}", args.work / f"latent-{args.n}{tag}.status"
    if args.reuse and (out / "index.json").exists() and status.exists():
        directory = IndexDirectory.open(out, mmap=False)
        hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
        return {"wall_s": directory.info.build_seconds, "peak_rss_bytes": int(hwm[0].split()[1]) * 1024}, directory
    return run_latent(args.work, data, args.n, extra, tag)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--factory", default=None, help="default: IVF<sqrt n>,SQ8 (shards and goes on disk)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/latent-bench-shards"))
    parser.add_argument("--serve-seconds", type=float, default=10.0)
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--reuse", action="store_true", help="reuse indexes built by an earlier run")
    parser.add_argument("--qps-rounds", type=int, default=10, help="interleaved batch-QPS rounds per index")
    args = parser.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    args.work.mkdir(parents=True, exist_ok=True)
    spec = ClusteredSpec(dim=args.dim, seed=0)
    data = dataset(args.work, args.n, spec)
    nlist = 2 ** round(np.log2(np.sqrt(args.n)))
    factory = args.factory or f"IVF{nlist},SQ8"
    common = [f"index.factory='{factory}'", "index.target_recall=0.95", "parallel.min_vectors=null"]
    result: dict = {"n": args.n, "dim": args.dim, "factory": factory, "shards": args.shards, "cpus": os.cpu_count()}

    # 1. one shard against N shards
    one_run, one = build(args, data, common, "-1shard")
    many_run, _ = build(args, data, [*common, f"index.shards={args.shards}"], f"-{args.shards}shards")
    many = IndexDirectory.open(args.work / f"latent-{args.n}-{args.shards}shards")
    rng = np.random.default_rng(1)
    rows = np.sort(rng.choice(args.n, QUERIES, replace=False))
    from pipeline.index.input.read import read_rows, scan

    (queries,) = read_rows(scan(str(data)), [rows], 65536, "ip")
    truth = without_self(exact_truth(data, queries), rows, K)
    apply_search_params(many.index, one.info.search_params)
    answers = {}
    named = (("1 shard", one, one_run), (f"{args.shards} shards", many, many_run))
    qps = interleaved_qps({name: directory.index for name, directory, _ in named}, queries, args.qps_rounds)
    for name, directory, run in named:
        d, labels = directory.index.search(queries, K + 1)
        answers[name] = (d, labels)
        # the truth is in input row order, the sharded index's labels too; a one-file index's are not (its
        # held-out tune rows are added last): its labels go to input rows through the ids they stand for
        as_rows = many.labels_of(directory.items(labels.ravel()).column("id")).reshape(labels.shape)
        result[name] = {
            "build_s": run["wall_s"],
            "peak_rss_bytes": run["peak_rss_bytes"],
            "recall": round(recall_at_k(without_self(as_rows, rows, K), truth), 4),
            "qps": round(qps[name]["best"], 1),
            "qps_median": round(qps[name]["median"], 1),
            "search_params": one.info.search_params,
            "bytes": directory.info.memory_bytes,
        }
    (d1, i1), (dn, i_n) = answers.values()
    result["identical_scores"] = bool((d1 == dn).all())
    # labels may differ (a one-file build adds its held-out tune rows last, a sharded one keeps input order):
    # compare the item ids the labels stand for
    ids_one = one.items(i1.ravel()).column("id").to_pylist()
    ids_many = many.items(i_n.ravel()).column("id").to_pylist()
    result["identical_ids"] = ids_one == ids_many
    for stat, key in (("qps", "sharding_qps_cost"), ("qps_median", "sharding_qps_cost_median")):
        result[key] = round(1 - result[f"{args.shards} shards"][stat] / result["1 shard"][stat], 3)
    print(json.dumps(result, indent=1), flush=True)

    # 2. on-disk lists: cold and warm page cache
    disk_dir = args.work / "ondisk"
    disk_dir.mkdir(exist_ok=True)
    copy = faiss.clone_index(one.index)
    ondisk.write_ondisk(copy, disk_dir / "shard-00000.faiss")
    del copy
    lists = ondisk.lists_file(disk_dir / "shard-00000.faiss")
    on_disk = faiss.read_index(str(disk_dir / "shard-00000.faiss"), faiss.IO_FLAG_ONDISK_SAME_DIR)
    apply_search_params(on_disk, one.info.search_params)
    drop_page_cache(lists)
    start = time.perf_counter()
    d_cold, i_cold = on_disk.search(queries, K + 1)
    cold = len(queries) / (time.perf_counter() - start)
    result["ondisk"] = {
        "lists_bytes": lists.stat().st_size,
        "qps_memory": result["1 shard"]["qps"],
        "qps_cold": round(cold, 1),
        "qps_warm": round(measure_qps(on_disk, queries, K + 1), 1),
        "identical_to_memory": bool((i_cold == i1).all() and (d_cold == d1).all()),
    }
    print(json.dumps(result["ondisk"], indent=1), flush=True)
    del on_disk

    # 3. serving the sharded index: one process against Ray Serve
    if not args.skip_serve:
        bodies = [{"vector": q.tolist(), "k": K} for q in queries[:200]]
        index = args.work / f"latent-{args.n}-{args.shards}shards"
        result["serve"] = {}
        for backend, extra in (("single", ()), ("ray", ("backend=ray", "replica_cpus=0.25", "ray.num_cpus=2"))):
            for clients in (1, 32):
                measured = serve_load(index, bodies, clients, args.serve_seconds, *extra)
                result["serve"][f"{backend}-{clients}"] = measured
                print(backend, clients, json.dumps(measured), flush=True)
    out = REPO / "bench" / "results" / f"shards-{args.n}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
