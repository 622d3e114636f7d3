"""`make bench-index`: latent index against exact search and autofaiss, on the same shards, in one run.

    python bench/bench_index.py --quick        # 200k x 512
    python bench/bench_index.py                # 1M x 512
    python bench/bench_index.py --n 50000 --skip-autofaiss
    python bench/bench_index.py --quick --gpu  # also the build on the GPU, and IndexFlatIP on the GPU

Steps: write seeded clustered unit vectors (tests/synthetic.py) as float32 .npy shards (the
format both tools read); measure IndexFlatIP's batch QPS and the exact neighbours of held-out
queries; run `latent index` (a subprocess: wall time, peak RSS as its VmHWM); run autofaiss through
the peers' script (LATENT_PEERS or --peers, default ../shared/peers); then search both written
indexes here with the same queries: recall@10 (a query's own row left out) and batch QPS (best of 3),
autofaiss both at its own setting and re-tuned to latent's measured recall. JSON goes to
bench/results/. Timings on a shared machine are noisy: compare ratios taken in the same run.
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

import faiss
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.index.builder.tune import measure_qps, tune  # noqa: E402
from pipeline.index.recall import recall_at_k, without_self  # noqa: E402
from pipeline.index.store.directory import IndexDirectory  # noqa: E402
from tests.synthetic import ClusteredSpec, iter_clustered, write_npy_folder  # noqa: E402

K = 10
QUERIES = 1000
ROWS_PER_FILE = 50_000


def vm_hwm(pid: int | str = "self") -> int:
    """Peak resident memory of one process (Linux VmHWM): unlike ru_maxrss it does not count the memory of
    the parent it was forked from before exec."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return 0


def run_measured(command: list[str], log: Path, env: dict | None = None) -> dict:
    """Run ``command``: wall seconds, exit code, and peak RSS of its largest process (VmHWM, polled)."""
    start = time.perf_counter()
    peak = 0
    with open(log, "w") as out:
        process = psutil.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
            except psutil.NoSuchProcess:
                tree = []
            peak = max([peak, *(vm_hwm(p.pid) for p in tree)])
            time.sleep(0.1)
    return {
        "command": shlex.join(command),
        "wall_s": round(time.perf_counter() - start, 2),
        "returncode": process.returncode,
        "peak_rss_bytes": peak,
    }


# `latent index` run so that it reports its own VmHWM at exit: exact, where polling could miss the end
LATENT = """
import atexit, sys
from pathlib import Path
report, sys.argv = Path(sys.argv[1]), ["latent", *sys.argv[2:]]
atexit.register(lambda: report.write_text(open("/proc/self/status").read()))
from pipeline.cli import main  # noqa: E402
main()
"""


def run_latent(work: Path, data: Path, n: int, extra: list[str], tag: str = "") -> tuple[dict, IndexDirectory]:
    out, status, log = work / f"latent-{n}{tag}", work / f"latent-{n}{tag}.status", work / f"latent-{n}{tag}.log"
    command = [sys.executable, "-c", LATENT, str(status), "index", f"input.path={data}", f"index.path={out}"]
    command += ["index.mode=overwrite", "progress=false", *extra]
    run = run_measured(command, log, {**os.environ, "PYTHONPATH": str(REPO)})
    if run["returncode"] != 0:
        sys.exit(f"latent index failed: see {log}")
    hwm = [line for line in status.read_text().splitlines() if line.startswith("VmHWM:")]
    run["peak_rss_bytes"] = max(run["peak_rss_bytes"], int(hwm[0].split()[1]) * 1024)
    return run, IndexDirectory.open(out, mmap=False)


def dataset(work: Path, n: int, spec: ClusteredSpec) -> Path:
    data = work / f"npy-{n}-{spec.dim}-seed{spec.seed}"
    if not (data / "_DONE").exists():
        print(f"writing {n} x {spec.dim} vectors to {data}", flush=True)
        write_npy_folder(data, iter_clustered(n, spec), rows_per_file=ROWS_PER_FILE)
        (data / "_DONE").write_text("")
    return data


def load(data: Path) -> np.ndarray:
    return np.concatenate([np.load(p) for p in sorted(data.glob("*.npy"))])


def evaluate(index: faiss.Index, queries: np.ndarray, truth: np.ndarray, rows: np.ndarray) -> dict:
    _, labels = index.search(queries, K + 1)
    recall = recall_at_k(without_self(labels, rows, K), truth)
    return {"recall": round(recall, 4), "qps": round(measure_qps(index, queries, K + 1), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="200k vectors instead of 1M")
    parser.add_argument("--n", type=int, help="number of vectors (overrides --quick)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--peers", default=os.environ.get("LATENT_PEERS", str(REPO.parent / "shared" / "peers")))
    parser.add_argument("--skip-autofaiss", action="store_true")
    parser.add_argument("--gpu", action="store_true", help="also build with index.device=cuda (needs a GPU)")
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "work"))
    parser.add_argument("--latent-args", default="", help="extra `latent index` overrides, space separated")
    args = parser.parse_args()
    n = args.n or (200_000 if args.quick else 1_000_000)
    spec = ClusteredSpec(dim=args.dim)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = REPO / "bench" / "results"
    data = dataset(work, n, spec)
    raw_bytes = n * args.dim * 4

    # exact search: the baseline's throughput and the truth for both tools' indexes
    x = load(data)
    rows = np.sort(np.random.default_rng(12345).choice(n, QUERIES, replace=False))
    queries = np.ascontiguousarray(x[rows])
    flat = faiss.IndexFlatIP(args.dim)
    flat.add(x)
    del x
    _, exact = flat.search(queries, K + 1)
    truth = without_self(exact, rows, K)
    flat_qps = measure_qps(flat, queries, K + 1)
    del flat
    print(f"IndexFlatIP: {flat_qps:.0f} queries/s (batch of {QUERIES})", flush=True)

    report: dict = {
        "n": n,
        "dim": args.dim,
        "spec": spec.__dict__,
        "queries": QUERIES,
        "k": K,
        "raw_float32_bytes": raw_bytes,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "faiss": faiss.__version__},
        "flat_ip_qps": round(flat_qps, 1),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }

    run, d = run_latent(work, data, n, args.latent_args.split())
    ours = evaluate(d.index, queries, truth, rows)
    report["latent"] = {
        **run,
        "factory": d.info.factory,
        "search_params": d.info.search_params,
        "build_reported": {"recall": d.info.recall.value, "qps": d.info.qps, "seconds": d.info.build_seconds},
        **ours,
        "speedup_vs_flat": round(ours["qps"] / flat_qps, 1),
        "rss_over_raw": round(run["peak_rss_bytes"] / raw_bytes, 2),
        "index_bytes": d.info.memory_bytes,
    }
    print(json.dumps(report["latent"], indent=2), flush=True)

    if args.gpu:  # the same build with FAISS on the GPU (training and list assignment), searched on the CPU
        if faiss.get_num_gpus() == 0:
            report["latent_gpu"] = {"skipped": "faiss sees no GPU"}
        else:
            run, g = run_latent(work, data, n, [*args.latent_args.split(), "index.device=cuda"], tag="-gpu")
            gpu_flat = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(args.dim))
            gpu_flat.add(load(data))
            report["latent_gpu"] = {
                **run,
                "factory": g.info.factory,
                **evaluate(g.index, queries, truth, rows),
                "build_speedup_vs_cpu": round(report["latent"]["wall_s"] / run["wall_s"], 2),
                "gpu_flat_ip_qps": round(measure_qps(gpu_flat, queries, K + 1), 1),
            }
            del gpu_flat
        print(json.dumps(report["latent_gpu"], indent=2), flush=True)

    # autofaiss, same shards
    script = Path(args.peers) / "autofaiss_index.sh"
    if args.skip_autofaiss or not script.exists():
        report["autofaiss"] = {"skipped": "--skip-autofaiss" if args.skip_autofaiss else f"{script} not found"}
    else:
        af_out = work / f"autofaiss-{n}"
        # the same OpenMP wait policy as latent sets for itself, so that neither spins on shared cores
        af_env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
        run = run_measured(["bash", str(script), str(data), str(af_out)], work / f"autofaiss-{n}.log", af_env)
        if run["returncode"] != 0:
            report["autofaiss"] = {**run, "failed": (work / f"autofaiss-{n}.log").read_text()[-2000:]}
        else:
            peer = json.loads((work / f"autofaiss-{n}.log").read_text().strip().splitlines()[-1])
            index = faiss.read_index(peer["index"])
            faiss.ParameterSpace().set_index_parameters(index, peer["index_param"])
            own = evaluate(index, queries, truth, rows)
            # the same recall as latent's index: autofaiss's index re-tuned with latent's tuner
            equal = tune(index, queries, truth, rows, K, ours["recall"])
            at_equal = {"params": equal.params, **evaluate(index, queries, truth, rows), "reached": equal.reached}
            report["autofaiss"] = {
                **run,
                "index_key": peer["index_key"],
                "index_param": peer["index_param"],
                "at_own_params": own,
                "at_latent_recall": at_equal,
            }
            report["latent_vs_autofaiss"] = {
                "build_time_ratio": round(report["latent"]["wall_s"] / run["wall_s"], 2),
                "qps_ratio_at_equal_recall": round(ours["qps"] / at_equal["qps"], 2),
            }
        print(json.dumps(report["autofaiss"], indent=2), flush=True)

    targets = {
        "recall_at_10_ge_0.95": ours["recall"] >= 0.95,
        "qps_ge_20x_flat": ours["qps"] >= 20 * flat_qps,
        "peak_rss_le_2x_raw": report["latent"]["peak_rss_bytes"] <= 2 * raw_bytes,
    }
    if "latent_vs_autofaiss" in report:
        targets["build_time_le_half_autofaiss"] = report["latent_vs_autofaiss"]["build_time_ratio"] <= 0.5
        targets["qps_above_autofaiss_at_equal_recall"] = report["latent_vs_autofaiss"]["qps_ratio_at_equal_recall"] > 1
    report["targets_met"] = targets
    results.mkdir(parents=True, exist_ok=True)
    path = results / f"index-{n}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({"targets_met": targets, "results": str(path)}, indent=2))


if __name__ == "__main__":
    main()
