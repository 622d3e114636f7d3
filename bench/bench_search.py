"""`make bench-search`: the cost of search on top of FAISS, on the index of `make bench-index`.

    python bench/bench_search.py --quick       # 200k x 512
    python bench/bench_search.py               # 1M x 512
    python bench/bench_search.py --n 50000

Steps: the same seeded clustered vectors as bench/bench_index.py (its shards, reused when present)
and the same `latent index` build (defaults: auto factory, recall@10 0.95); then, on that one
memory-mapped index, the batch throughput of ``Searcher.search(vectors=…)`` against the FAISS
index's own ``search`` with the same queries and parameters. One function per measurement, so that
more (the HTTP service's latency) can join the same report. JSON goes to bench/results/.
Timings on a shared machine are noisy: the calls alternate within each of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_index import dataset, load, run_latent  # noqa: E402

from pipeline.index.store.format import INFO_FILE  # noqa: E402
from pipeline.search import Searcher  # noqa: E402
from tests.synthetic import ClusteredSpec  # noqa: E402

K = 10
QUERIES = 1000


def time_rounds(calls: dict[str, Callable[[], object]], rounds: int) -> dict[str, np.ndarray]:
    """Wall seconds of each call in each round; the calls run back to back within a round, so that the noise
    of a shared machine hits them alike and a round's ratios compare like with like."""
    seconds = {name: np.zeros(rounds) for name in calls}
    for r in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            seconds[name][r] = time.perf_counter() - start
    return seconds


def measure_batch_qps(searcher: Searcher, queries: np.ndarray, k: int, rounds: int) -> dict:
    """Batch QPS of Searcher.search (with and without metadata rows) against FAISS on the same index.

    QPS: best round. Overhead: the median over rounds of 1 - t(FAISS) / t(Searcher), i.e. the share of
    FAISS's throughput that Searcher loses, paired within rounds (robust to the machine's load drifting)."""
    index = searcher.directory.index
    seconds = time_rounds(
        {
            "faiss": lambda: index.search(queries, k),
            "searcher": lambda: searcher.search(vectors=queries, k=k),
            "searcher_ids_only": lambda: searcher.search(vectors=queries, k=k, with_items=False),
        },
        rounds,
    )
    qps = {name: round(len(queries) / s.min(), 1) for name, s in seconds.items()}
    overhead = {
        name: round(float(np.median(1 - seconds["faiss"] / seconds[name])), 4) for name in seconds if name != "faiss"
    }
    extra_ms = {  # Searcher's own work per call (ids, metadata rows), paired within rounds
        name: round(float(np.median(seconds[name] - seconds["faiss"])) * 1000, 2) for name in seconds if name != "faiss"
    }
    faiss_ms = round(float(np.median(seconds["faiss"])) * 1000, 2)
    return {
        "queries_per_call": len(queries),
        "k": k,
        "rounds": rounds,
        "qps": qps,
        "overhead": overhead,
        "faiss_ms_per_call_median": faiss_ms,
        "extra_ms_per_call_median": extra_ms,
    }


def check_same_answers(searcher: Searcher, queries: np.ndarray, k: int) -> bool:
    """Searcher's ids are FAISS's labels mapped through the index's id map (a benchmark of a wrong answer is moot)."""
    _, labels = searcher.directory.index.search(queries, k)
    return searcher.search(vectors=queries, k=k).ids.tolist() == searcher.directory.ids(labels).tolist()


def build_index(work: Path, n: int, spec: ClusteredSpec, latent_args: list[str]) -> tuple[Path, Path]:
    """bench_index's shards and `latent index` build, reused when an earlier run left them in ``work``."""
    data = dataset(work, n, spec)
    index = work / f"latent-{n}"
    if not (index / INFO_FILE).exists():
        print(f"building the index of {n} x {spec.dim} vectors with latent index", flush=True)
        run_latent(work, data, n, latent_args)
    return data, index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k vectors instead of 1M")
    parser.add_argument("--n", type=int, help="number of vectors (overrides --quick)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument(
        "--threads", type=int, default=0, help="FAISS OpenMP threads (0: its default); 1 is steadier on a busy machine"
    )
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "work"))
    parser.add_argument("--latent-args", default="", help="extra `latent index` overrides, space separated")
    args = parser.parse_args()
    n = args.n or (200_000 if args.quick else 1_000_000)
    spec = ClusteredSpec(dim=args.dim)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data, index_path = build_index(work, n, spec, args.latent_args.split())
    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    rows = np.sort(np.random.default_rng(12345).choice(n, QUERIES, replace=False))  # bench_index's queries
    queries = np.ascontiguousarray(load(data)[rows])
    searcher = Searcher.open(index_path)
    report: dict = {
        "n": n,
        "dim": args.dim,
        "index": {"factory": searcher.info.factory, "search_params": searcher.info.search_params},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "faiss": faiss.__version__},
        "faiss_threads": faiss.omp_get_max_threads(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "same_answers": check_same_answers(searcher, queries, K),
        "batch": measure_batch_qps(searcher, queries, K, args.rounds),
    }
    print(json.dumps(report, indent=2), flush=True)
    report["targets_met"] = {
        "same_answers": report["same_answers"],
        "searcher_overhead_le_10pct": report["batch"]["overhead"]["searcher"] <= 0.10,
    }
    results = REPO / "bench" / "results"
    path = results / f"search-{n}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({"targets_met": report["targets_met"], "results": str(path)}, indent=2))


if __name__ == "__main__":
    main()
