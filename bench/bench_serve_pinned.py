"""The acceptance check serve-clipclient-scales' ratio (single-process server QPS at 32 urllib clients / the
index's batch QPS in one process), measured twice in one run:

- ``shared``: as the check runs it: the batch, the server and the 32 client threads all on every core;
- ``pinned``: the server (its event loop and FAISS's OpenMP team) on ``--server-cpus``, the same client load on
  ``--client-cpus`` (``taskset``), and the batch in a process pinned to ``--server-cpus``: the server gets
  the cores the batch had, and the clients stop taking them.

During each load window it records the CPU seconds of the server process (/proc via psutil), of the client
process (its own getrusage) and of each core (psutil.cpu_times(percpu=True): busy time includes other users'
processes), so the share of the machine the clients take is a measured figure.

    python bench/bench_serve_pinned.py --work /tmp/pinned            # builds the check's index there first
    python bench/bench_serve_pinned.py --index IDX --queries Q.npy --modes pinned --seconds 12

The index is built like the check's: ``synth_embeddings.py EMB 100000 512 --shards 4 --queries 2000
--seed 31`` (the check's generator, --synth) and ``latent index index.factory=Flat``. JSON to
bench/results/serve-pinned-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SYNTH = "/work/shared/checks/lib/synth_embeddings.py"

# the check's batch figure: 2,000 queries in one Searcher call after a 200-query warm-up
BATCH = """
import sys, json, time, resource, numpy as np
from pipeline.search import Searcher
s, q = Searcher.open(sys.argv[1]), np.load(sys.argv[2]).astype("float32")
s.search(vectors=q[:200], k=10)
c0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
s.search(vectors=q, k=10)
wall, c1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
out = {"qps": round(len(q) / wall, 1), "cpu_ms_per_query": round(cpu * 1000 / len(q), 3)}
# what the server's searches cost: its FAISS settings (batcher.py), the batch sizes 32 clients can form
import os, faiss
from pipeline.serve.batcher import BLAS_FROM
faiss.cvar.distance_compute_blas_threshold = BLAS_FROM
faiss.omp_set_num_threads(max(1, min(faiss.omp_get_max_threads(), (os.cpu_count() or 2) - 1)))
for b in (1, 16, 32):
    c0 = resource.getrusage(resource.RUSAGE_SELF)
    for i in range(0, 512, b):
        s.search(vectors=q[i : i + b], k=10)
    c1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    out[f"server_faiss_cpu_ms_at_batch_{b}"] = round(cpu * 1000 / 512, 3)
print(json.dumps(out))
"""

# the check's load, verbatim (a thread per client, urllib, json.dumps per request, a 4-client 3 s warm-up), with
# a line on stdout when the measured window opens, and this process's CPU seconds over the window
CLIENT = """
import sys, json, time, threading, resource, urllib.request, numpy as np
port, q, clients, seconds = sys.argv[1], np.load(sys.argv[2]).astype("float32"), int(sys.argv[3]), float(sys.argv[4])
def qps(port, clients, seconds=12):
    n = [0]; stop = time.time() + seconds; lock = threading.Lock()
    def run(j):
        i = j
        while time.time() < stop:
            body = json.dumps({"vector": q[i % len(q)].tolist(), "k": 10}).encode(); i += clients
            urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/search", body,
                                   {"content-type": "application/json"}), timeout=60).read()
            with lock: n[0] += 1
    ts = [threading.Thread(target=run, args=(j,)) for j in range(clients)]
    [x.start() for x in ts]; [x.join() for x in ts]
    return n[0] / seconds
qps(port, 4, 3)
print("window", flush=True)
c0 = resource.getrusage(resource.RUSAGE_SELF)
result = qps(port, clients, seconds)
c1 = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"qps": round(result, 1), "cpu_s": round(c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime, 2)}))
"""


def pinned(cpus: str | None, command: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else command


def prepare(work: Path, synth: str) -> tuple[Path, Path]:
    """The check's corpus and Flat index under ``work`` (kept for the next run)."""
    emb, index = work / "emb", work / "idx"
    if not (index / "index.json").is_file():
        subprocess.run([sys.executable, synth, str(emb), "100000", "512", "--shards", "4", "--queries", "2000",
                        "--seed", "31"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run([sys.executable, "-m", "pipeline.cli", "index", f"input.path={emb}", f"index.path={index}",
                        "index.factory=Flat", "progress=false"], check=True, env=_env())  # fmt: skip
    return index, Path(f"{emb}_queries.npy")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore"}


def batch(index: Path, queries: Path, cpus: str | None) -> dict:
    out = subprocess.run(pinned(cpus, [sys.executable, "-c", BATCH, str(index), str(queries)]), env=_env(),
                         check=True, capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def load(index: Path, queries: Path, server_cpus: str | None, client_cpus: str | None, clients: int, seconds: float):
    """One server, the check's load against it; CPU seconds of server, clients and each core over the window."""
    import httpx
    import psutil

    command = [sys.executable, "-m", "pipeline.cli", "serve", f"index.path={index}", "port=0", "log_level=warning"]
    server = subprocess.Popen(pinned(server_cpus, command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env())  # fmt: skip
    try:
        for line in server.stdout:
            if match := re.search(r"on http://127\.0\.0\.1:(\d+)/", line):
                port = match[1]
                break
        else:
            raise RuntimeError(f"latent serve did not start (exit {server.wait()})")
        url = f"http://127.0.0.1:{port}"
        health = httpx.get(f"{url}/healthz", timeout=60).json()
        proc = psutil.Process(server.pid)
        client = subprocess.Popen(pinned(client_cpus, [sys.executable, "-c", CLIENT, port, str(queries), str(clients),
                                  str(seconds)]), stdout=subprocess.PIPE, text=True, env=_env())  # fmt: skip
        assert client.stdout.readline().strip() == "window", "the client failed before its window"
        s0, c0, h0 = proc.cpu_times(), psutil.cpu_times(percpu=True), httpx.get(f"{url}/healthz", timeout=60).json()
        t0 = time.perf_counter()
        result = json.loads(client.stdout.read().strip().splitlines()[-1])
        wall = time.perf_counter() - t0
        s1, c1, h1 = proc.cpu_times(), psutil.cpu_times(percpu=True), httpx.get(f"{url}/healthz", timeout=60).json()
        client.wait()
    finally:
        server.send_signal(2)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    served = result["qps"] * seconds
    server_cpu = s1.user + s1.system - s0.user - s0.system
    batches = h1["batches"]["vectors"] - h0["batches"]["vectors"]
    queries_batched = h1["batched_queries"]["vectors"] - h0["batched_queries"]["vectors"]
    return {
        "qps": result["qps"],
        "wall_s": round(wall, 2),
        "server_cpu_s": round(server_cpu, 2),
        "client_cpu_s": result["cpu_s"],
        "server_cpu_ms_per_request": round(server_cpu * 1000 / served, 3) if served else None,
        "client_cpu_ms_per_request": round(result["cpu_s"] * 1000 / served, 3) if served else None,
        "core_busy_s": [round(_busy(b) - _busy(a), 2) for a, b in zip(c0, c1)],  # every process, ours and others'
        "mean_batch": round(queries_batched / batches, 2) if batches else None,
        "ntotal": health["ntotal"],
    }


def _busy(times) -> float:
    return times.user + times.nice + times.system + getattr(times, "irq", 0) + getattr(times, "softirq", 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="the check's index (default: built under --work)")
    parser.add_argument("--queries", help="its queries .npy (default: built under --work)")
    parser.add_argument("--work", default="/tmp/latent-bench-pinned")
    parser.add_argument("--synth", default=SYNTH, help="the check's generator, synth_embeddings.py")
    parser.add_argument("--modes", default="shared,pinned")
    parser.add_argument("--server-cpus", default="0")
    parser.add_argument("--client-cpus", default="1")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=12)
    args = parser.parse_args()
    if args.index:
        index, queries = Path(args.index), Path(args.queries)
    else:
        index, queries = prepare(Path(args.work), args.synth)
    results: dict = {"command": sys.argv, "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    for mode in args.modes.split(","):
        server_cpus, client_cpus = (args.server_cpus, args.client_cpus) if mode == "pinned" else (None, None)
        row = {"batch": batch(index, queries, server_cpus)}
        row["load"] = load(index, queries, server_cpus, client_cpus, args.clients, args.seconds)
        row["ratio"] = round(row["load"]["qps"] / row["batch"]["qps"], 3)
        results[mode] = row
        print(f"{mode}: {json.dumps(row)}", flush=True)
    results["load_average_after"] = os.getloadavg()
    out = REPO / "bench" / "results" / f"serve-pinned-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
