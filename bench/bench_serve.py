"""`make bench-serve`: `latent serve` latency and throughput with concurrent clients on loopback, side by side
in one run: the one-process server and Ray Serve (1 and 2 replicas per shard), 1/8/32 clients, the native API
(`POST /search`) and clip-retrieval's (`POST /knn-service`), against the index's batch QPS in one process.

    python bench/bench_serve.py --n 100000 --skip-text         # 100k x 512 Flat (this 2-core machine)
    python bench/bench_serve.py --n 1000000                     # the 1M x 512 index of bench-index
    python bench/bench_serve.py --index IDX --backends single --clients 1,32 --seconds 20

Steps: write seeded clustered unit vectors (tests/synthetic.py) and build them with
`latent index` (index.factory, Flat by default: search dominates), unless --index is given; for text
queries, an index of 20k vectors carrying the fingerprint of ViT-B-32 with seeded random weights (so the
server builds and runs the real ViT-B-32 text tower, offline). For each backend, start `latent serve` on
a free loopback port in a subprocess (backend=ray: a private Ray of --ray-cpus CPUs, replica_cpus sized so
every replica fits), then `--clients` concurrent asyncio clients (httpx, keep-alive) send queries for
`--seconds` after a warm-up: p50/p99 latency as the clients see it, throughput, and the server's mean
micro-batch size (from /healthz). JSON to bench/results/serve-<time>.json. The clients share the
machine's cores with the server: on a 2-core machine they cost it throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.cli import compose  # noqa: E402
from pipeline.index.builder.build import run_index  # noqa: E402
from tests.synthetic import ClusteredSpec, clustered_unit_vectors, write_embedding_dataset  # noqa: E402

K = 10
TEXTS = [
    f"a {adj} photo of a {thing} {where}"
    for adj in ("blurry", "bright", "dark", "close-up", "black and white")
    for thing in ("cat", "dog", "red car", "mountain", "bowl of soup", "guitar", "city street", "child")
    for where in ("at night", "in the snow", "on a table", "by the sea", "indoors")
]


def build_vector_index(work: Path, n: int, dim: int, factory: str, shards: int = 1, model: str | None = None) -> Path:
    """Seeded clustered unit vectors built with `latent index`; with ``model`` the dataset carries that model's
    fingerprint (seeded random weights), so the same index answers text queries through the real text tower."""
    fingerprint = None
    if model:
        from pipeline.encode.model import describe_model, resolve_model

        fingerprint = describe_model(resolve_model(model, None)).fingerprint
        dim = fingerprint["dim"]
    tag = (
        f"{n}-{dim}-{factory.replace(',', '_')}"
        + (f"-s{shards}" if shards > 1 else "")
        + (f"-{model}" if model else "")
    )
    index = work / f"serve-idx-{tag}"
    if (index / "index.json").is_file():
        return index
    data = work / (f"serve-emb-{n}-{dim}" + (f"-{model}" if model else ""))
    if not data.exists():
        chunks = (
            clustered_unit_vectors(min(100_000, n - s), ClusteredSpec(dim=dim, seed=s)) for s in range(0, n, 100_000)
        )
        write_embedding_dataset(data, chunks, dtype="float32", model=fingerprint, rows_per_shard=100_000)
    keys = [f"input.path={data}", f"index.path={index}", f"index.factory='{factory}'", "progress=false"]
    if shards > 1:  # shard builds in this process, one after the other (no Ray needed to build the bench's index)
        keys += [f"index.shards={shards}", "parallel.min_vectors=null"]
    run_index(compose("index", keys))
    return index


def batch_qps(index: Path, queries: np.ndarray) -> float:
    """The index's batch QPS in this process: every query in one Searcher call (what HTTP is measured against)."""
    from pipeline.search import Searcher

    searcher = Searcher.open(index)
    searcher.search(vectors=queries[:100], k=K)
    started = time.perf_counter()
    searcher.search(vectors=queries, k=K)
    return round(len(queries) / (time.perf_counter() - started), 1)


def build_text_index(work: Path, model: str, n: int = 20_000) -> Path:
    """An index whose fingerprint is ``model`` with seeded random weights: text queries run the real model."""
    from pipeline.encode.model import describe_model, resolve_model

    index = work / f"serve-text-idx-{model}"
    if (index / "index.json").is_file():
        return index
    fingerprint = describe_model(resolve_model(model, None)).fingerprint
    data = work / f"serve-text-emb-{model}"
    vectors = clustered_unit_vectors(n, ClusteredSpec(dim=fingerprint["dim"], seed=7))
    write_embedding_dataset(data, vectors, dtype="float32", model=fingerprint, rows_per_shard=n)
    run_index(compose("index", [f"input.path={data}", f"index.path={index}", "index.factory=Flat", "progress=false"]))
    return index


class Server:
    """`latent serve` in a subprocess on a free loopback port."""

    def __init__(self, index: Path, *overrides: str, code: Path = REPO) -> None:
        env = {**os.environ, "PYTHONPATH": str(code)}
        command = [sys.executable, "-m", "pipeline.cli", "serve", f"index.path={index}", "port=0"]
        command += ["log_level=warning", *overrides]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        for line in self.process.stdout:
            if match := re.search(r"on (http://127\.0\.0\.1:\d+)/", line):
                self.url = match[1]
                break
        else:
            raise RuntimeError(f"latent serve did not start (exit {self.process.wait()})")
        import httpx

        for _ in range(1800):  # Ray Serve on a loaded cluster can take minutes to deploy
            try:
                httpx.get(f"{self.url}/healthz", timeout=5)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.process.kill()  # not left running when the bench gives up on it
        raise RuntimeError("latent serve does not answer")

    def health(self) -> dict:
        import httpx

        return httpx.get(f"{self.url}/healthz", timeout=30).json()

    def stop(self) -> None:
        self.process.send_signal(2)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def _load(url: str, path: str, bodies: list[dict], clients: int, warmup: float, seconds: float) -> dict:
    import httpx

    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def one_client(c: int) -> None:
            nonlocal errors
            i = c
            while (now := time.perf_counter()) < stop_at:
                response = await client.post(path, json=bodies[i % len(bodies)])
                done = time.perf_counter()
                i += clients
                if now >= measure_from:
                    latencies.append(done - now)
                    errors += response.status_code != 200

        await asyncio.gather(*(one_client(c) for c in range(clients)))
    return _summary(latencies, errors, clients, seconds)


def _load_threads(url: str, path: str, bodies: list[dict], clients: int, warmup: float, seconds: float) -> dict:
    """The acceptance check's client: one thread per client, urllib (a new connection per request), json.dumps."""
    import threading
    import urllib.error
    import urllib.request

    latencies: list[float] = []
    failed: list[int] = []  # list.append is atomic under the GIL; += on a shared int is not
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    def one_client(c: int) -> None:
        i = c
        while (now := time.perf_counter()) < stop_at:
            data = json.dumps(bodies[i % len(bodies)]).encode()
            request = urllib.request.Request(url + path, data, {"content-type": "application/json"})
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                    status = response.status
            except urllib.error.HTTPError as err:
                status = err.code
            i += clients
            if now >= measure_from:
                latencies.append(time.perf_counter() - now)
                if status != 200:
                    failed.append(status)

    threads = [threading.Thread(target=one_client, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return _summary(latencies, len(failed), clients, seconds)


# clip-retrieval's own ClipClient (in its own venv: --peer-python), one per client thread, closed loop; prints the
# latencies of the measured window as JSON
CLIPCLIENT = """
import sys, json, time, threading, numpy as np
from clip_retrieval.clip_client import ClipClient
url, name, q = sys.argv[1], sys.argv[2], np.load(sys.argv[3])
clients, warmup, seconds = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
latencies, failed = [], []
start = time.perf_counter(); measure_from, stop_at = start + warmup, start + warmup + seconds
def run(c):
    client = ClipClient(url=url + "/knn-service", indice_name=name, num_images=10, deduplicate=False,
                        use_safety_model=False, use_violence_detector=False)
    i = c
    while (now := time.perf_counter()) < stop_at:
        try:
            ok = len(client.query(embedding_input=q[i % len(q)].tolist())) > 0
        except Exception:
            ok = False
        i += clients
        if now >= measure_from:
            latencies.append(time.perf_counter() - now)
            if not ok: failed.append(1)
ts = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
[t.start() for t in ts]; [t.join() for t in ts]
print(json.dumps({"latencies": latencies, "errors": len(failed)}))
"""


def _load_clipclient(url: str, peer_python: str, queries: Path, clients: int, warmup: float, seconds: float) -> dict:
    import httpx

    name = httpx.get(f"{url}/indices-list", timeout=30).json()[0]
    command = [peer_python, "-c", CLIPCLIENT, url, name, str(queries), str(clients), str(warmup), str(seconds)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout
    result = json.loads(out.strip().splitlines()[-1])
    return _summary(result["latencies"], result["errors"], clients, seconds)


def _summary(latencies: list[float], errors: int, clients: int, seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "seconds": seconds,
        "requests": len(ms),
        "errors": errors,
        "qps": round(len(ms) / seconds, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p90_ms": round(float(np.percentile(ms, 90)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "mean_ms": round(float(ms.mean()), 2),
    }


def backend_overrides(backend: str, ray_cpus: int) -> list[str]:
    """`latent serve` keys of a backend: ``single`` (or ``baseline``: the same from --baseline's code), or ``rayN``
    (Ray Serve, N replicas per shard; each replica's CPU share sized by `latent serve` to fit, replica_cpus=null),
    or ``rayN@ADDRESS`` (the same on a running cluster)."""
    if backend in ("single", "baseline"):
        return []
    name, _, address = backend.partition("@")
    where = [f"ray.address={address}"] if address else [f"ray.num_cpus={ray_cpus}"]
    return ["backend=ray", f"replicas={int(name[3:])}", *where]


def measure_backend(
    index: Path,
    backend: str,
    loads: list[tuple],
    ray_cpus: int,
    code: Path = REPO,
    client: str = "httpx",
    peer_python: str | None = None,
) -> dict:
    """Each of ``loads`` (name, path, kind, bodies, clients, warmup, seconds) against one fresh server; a load
    named ``clipclient`` runs clip-retrieval's ClipClient (``bodies``: a .npy of query vectors) in ``peer_python``."""
    server = Server(index, *backend_overrides(backend, ray_cpus), code=code)
    out = {}
    try:
        for name, path, kind, bodies, clients, warmup, seconds in loads:
            before = server.health()
            if name == "clipclient":
                result = _load_clipclient(server.url, peer_python, bodies, clients, warmup, seconds)
            elif client == "urllib":
                result = _load_threads(server.url, path, bodies, clients, warmup, seconds)
            else:
                result = asyncio.run(_load(server.url, path, bodies, clients, warmup, seconds))
            after = server.health()
            batches = after["batches"][kind] - before["batches"][kind]
            queries = after["batched_queries"][kind] - before["batched_queries"][kind]
            result["mean_batch"] = round(queries / batches, 2) if batches else None
            out[f"{name}_{clients}"] = result
            print(f"{backend} {name}, {clients} clients: {json.dumps(result)}", flush=True)
    finally:
        server.stop()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index", help="an index directory for vector queries (default: build --n x --dim)")
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--factory", default="Flat")
    parser.add_argument(
        "--shards", type=int, default=1, help="shards of the built index (one Ray Serve deployment each)"
    )
    parser.add_argument(
        "--model", help="build the vector index with this model's fingerprint (random weights): text queries then "
        "run against the same index (--text-index is not needed)",
    )  # fmt: skip
    parser.add_argument("--text-index", help="an index with a model fingerprint for text queries")
    parser.add_argument("--text-model", default="ViT-B-32", help="model of the built text index (random weights)")
    parser.add_argument("--skip-text", action="store_true")
    parser.add_argument("--skip-clip", action="store_true", help="leave out clip-retrieval's /knn-service path")
    parser.add_argument(
        "--peer-python", help="a python with clip-retrieval installed (../shared/peers/setup.sh): the /knn-service "
        "rows then run clip-retrieval's own ClipClient instead of posting its body",
    )  # fmt: skip
    parser.add_argument("--nprobe", type=int, help="set the built index's nprobe (index.json search_params) first")
    parser.add_argument(
        "--backends", default="single,ray1,ray2", help="single, baseline (see --baseline), rayN (N replicas per shard)"
    )
    parser.add_argument("--baseline", help="another checkout's root (e.g. `git worktree add`): backend `baseline`")
    parser.add_argument(
        "--client", choices=("httpx", "urllib"), default="httpx",
        help="httpx: asyncio clients with keep-alive; urllib: a thread per client, a connection per request "
        "(the acceptance check serve-clipclient-scales)",
    )  # fmt: skip
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--ray-cpus", type=int, default=os.cpu_count())
    parser.add_argument(
        "--ray-nodes", type=int, default=1, help="2: the rayN backends run on a loopback cluster of two `ray start` "
        "nodes (tests/cluster/localcluster.py, own --temp-dir each) sharing --ray-cpus between them",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--warmup", type=float, default=2)
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "work"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    clients = [int(c) for c in args.clients.split(",")]
    timing = (args.warmup, args.seconds)

    index = (
        Path(args.index)
        if args.index
        else build_vector_index(work, args.n, args.dim, args.factory, args.shards, args.model)
    )
    if args.nprobe:  # the tuner's choice for these clusters can be lower than the setting to compare with
        info = json.loads((index / "index.json").read_text())
        info["search_params"] = {**info.get("search_params", {}), "nprobe": args.nprobe}
        (index / "index.json").write_text(json.dumps(info, indent=2))
    info = json.loads((index / "index.json").read_text())
    queries = clustered_unit_vectors(2000, ClusteredSpec(dim=info["dim"], seed=12345))
    results: dict = {
        "command": sys.argv,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "load_average": os.getloadavg(),
        "k": K,
        "index": {"ntotal": info["ntotal"], "dim": info["dim"], "factory": info["factory"]},
        "batch_qps": batch_qps(index, queries),
    }
    print(f"batch search in one process: {results['batch_qps']} QPS", flush=True)
    vectors = [{"vector": q.round(6).tolist(), "k": K} for q in queries]
    clip = [{"embedding_input": q.round(6).tolist(), "num_images": K, "modality": "image", "deduplicate": False,
             "use_safety_model": False, "use_violence_detector": False} for q in queries]  # fmt: skip
    loads = [("vector", "/search", "vectors", vectors, c, *timing) for c in clients]
    if args.peer_python and not args.skip_clip:
        saved = work / "clipclient-queries.npy"
        np.save(saved, queries.round(6))
        loads += [("clipclient", "/knn-service", "vectors", saved, c, *timing) for c in clients]
    elif not args.skip_clip:
        loads += [("clip_vector", "/knn-service", "vectors", clip, c, *timing) for c in clients]
    if args.model and not args.skip_text:  # the same index answers text queries: every backend runs them
        loads += [("text", "/search", "texts", [{"text": t, "k": K} for t in TEXTS], c, *timing) for c in clients]
    for backend in args.backends.split(","):
        code = Path(args.baseline) if backend == "baseline" else REPO
        cluster = None
        if args.ray_nodes == 2 and backend.startswith("ray"):
            # a fresh cluster per backend: Ray Serve, once started on a cluster, keeps its first HTTP port
            from tests.cluster.localcluster import LocalCluster

            half = args.ray_cpus // 2
            cluster = LocalCluster.start(head_cpus=half, worker_cpus=args.ray_cpus - half)
            os.environ["RAY_AUTH_MODE"] = "disabled"
            results["ray_nodes"] = 2
        try:
            where = f"{backend}@{cluster.address}" if cluster else backend
            results[backend] = measure_backend(index, where, loads, args.ray_cpus, code, args.client, args.peer_python)
        finally:
            if cluster is not None:
                cluster.stop()
    if not args.skip_text and not args.model:
        text_index = Path(args.text_index) if args.text_index else build_text_index(work, args.text_model)
        texts = [("text", "/search", "texts", [{"text": t, "k": K} for t in TEXTS], c, *timing) for c in clients]
        results["single_text"] = measure_backend(text_index, "single", texts, args.ray_cpus, client=args.client)
    results["load_average_after"] = os.getloadavg()
    out = REPO / "bench" / "results" / f"serve-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
