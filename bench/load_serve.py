"""A bounded load test and memory soak of `latent serve` on loopback with Locust (a real load tool).

    python bench/load_serve.py --index IDX --queries Q.npy --locust /path/to/locust --users 32 --minutes 3

Starts `latent serve` (bench_serve.Server) on a free loopback port, runs Locust headless for `--minutes`
with `--users` closed-loop users (bench/locustfile_serve.py: vector queries to /search and /knn-service;
any answer but 200, or 503 with Retry-After, is a failure) and samples the server's RSS every
`--every` seconds. Prints one JSON line: requests, failures, QPS, p50/p99 by Locust, RSS first/last/max
(memory flat: last within a few % of the first sample after warm-up). Locust runs from its own
environment (`pip install locust` in a venv), never the project's.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_serve import Server  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", required=True)
    parser.add_argument("--queries", required=True, help="an .npy of query vectors")
    parser.add_argument("--locust", required=True, help="the locust executable (its own venv)")
    parser.add_argument("--users", type=int, default=32)
    parser.add_argument("--minutes", type=float, default=3)
    parser.add_argument("--every", type=float, default=10)
    parser.add_argument("--out", default="/tmp/latent-load")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    server = Server(Path(args.index))
    pid = server.process.pid  # `python -m pipeline.cli serve` serves in the process it starts
    seconds = int(args.minutes * 60)
    cmd = [args.locust, "-f", str(REPO / "bench" / "locustfile_serve.py"), "--headless", "-u", str(args.users),
           "-r", str(args.users), "-t", f"{seconds}s", "--host", server.url, "--csv", str(out / "load"),
           "--only-summary"]  # fmt: skip
    import numpy as np

    queries = out / "queries.json"
    queries.write_text(json.dumps(np.load(args.queries).astype("float32")[:1000].round(6).tolist()))
    env = {**os.environ, "LATENT_LOAD_QUERIES": str(queries)}
    samples = []
    try:
        locust = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        while locust.poll() is None and time.monotonic() - started < seconds + 120:
            samples.append((round(time.monotonic() - started), rss_mib(pid)))
            time.sleep(args.every)
        locust.wait(timeout=60)
    finally:
        server.stop()
    with open(out / "load_stats.csv") as f:
        total = next(row for row in csv.DictReader(f) if row["Name"] == "Aggregated")
    with open(out / "load_failures.csv") as f:
        failures = [{"name": r["Name"], "error": r["Error"], "count": r["Occurrences"]} for r in csv.DictReader(f)]
    warm = [rss for t, rss in samples if t >= 30] or [rss for _, rss in samples]
    print(json.dumps({
        "users": args.users, "seconds": seconds, "requests": int(total["Request Count"]),
        "failures": int(total["Failure Count"]), "failure_kinds": failures, "qps": round(float(total["Requests/s"]), 1),
        "p50_ms": float(total["50%"]), "p99_ms": float(total["99%"]),
        "rss_mib": {"first_after_30s": warm[0], "last": warm[-1], "max": max(warm)}, "rss_samples": samples,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
