"""Cluster benchmark: `latent embed` on a two-node local Ray cluster against the same job on one node.

    python bench/bench_cluster.py [--images 300] [--model ViT-B-32] [--repeats 2]

Both clusters are started with `ray start` on loopback (tests/cluster/localcluster.py): one node with
2 CPUs, and a head plus a worker node with 2 CPUs each (on the same machine's cores: this measures the
overhead of the cluster path, not scaling). The job joins each with `ray.address=host:port`, on the
same corpus (crops of real photos, bench_embed.make_corpus) with random weights (model.pretrained=null).
Reports steady and overall rows/s (best of --repeats) and the ratio two nodes / one node. By default
both run one encoder actor (--encoder-actors 1), so the two clusters do the same compute and the
ratio is the cost of the cluster path (decode tasks and blocks crossing nodes, scheduling).
Writes bench/results/cluster.json and prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from bench_embed import make_corpus  # noqa: E402
from cluster.localcluster import LocalCluster, cluster_env  # noqa: E402


def run_embed(cluster: LocalCluster, corpus: Path, out: Path, model: str, timeout: float, actors: int | None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    command = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "embed",
        f"input.path={corpus}",
        f"output.path={out}",
        f"model.name={model}",
        "model.pretrained=null",
        "progress=false",
        f"ray.address={cluster.address}",
        "output.rows_per_shard=16",  # enough shards for the steady rate (first to last shard) to mean something
        "batch_size=32",
    ]
    if actors:
        command.append(f"resources.encoder_actors={actors}")
    started = time.perf_counter()
    run = subprocess.run(command, cwd=REPO, env=cluster_env(), capture_output=True, text=True, timeout=timeout)
    if run.returncode != 0:
        raise RuntimeError(f"latent embed failed:\n{run.stderr[-3000:]}")
    (summary,) = [json.loads(p.read_text()) for p in (out / "_latent" / "runs").glob("*/summary.json")]
    summary["process_seconds"] = round(time.perf_counter() - started, 2)
    return summary


def measure(nodes: int, corpus: Path, work: Path, model: str, repeats: int, timeout: float, actors: int | None) -> dict:
    cluster = LocalCluster.start(head_cpus=2, worker_cpus=2 if nodes == 2 else None)
    try:
        runs = [run_embed(cluster, corpus, work / f"emb-{nodes}", model, timeout, actors) for _ in range(repeats)]
    finally:
        cluster.stop()
    best = max(runs, key=lambda r: r["steady_rows_per_second"])
    return {
        "nodes": nodes,
        "steady_rows_per_second": best["steady_rows_per_second"],
        "rows_per_second": max(r["rows_per_second"] for r in runs),
        "rows": best["rows"],
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--model", default="ViT-B-32")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=RESULTS / "cluster-work")
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument(
        "--encoder-actors",
        type=int,
        default=1,
        help="the same compute on both clusters (default 1: one actor, torch on its node's 2 CPUs); "
        "0: latent's default, one CPU actor per node, which oversubscribes two nodes sharing the same cores",
    )
    args = parser.parse_args()

    corpus = make_corpus(args.work / f"corpus-{args.images}", args.images)
    one = measure(1, corpus, args.work, args.model, args.repeats, args.timeout, args.encoder_actors or None)
    two = measure(2, corpus, args.work, args.model, args.repeats, args.timeout, args.encoder_actors or None)
    result = {
        "images": args.images,
        "model": args.model,
        "encoder_actors": args.encoder_actors or "default",
        "one_node": one,
        "two_nodes": two,
        "ratio_steady": round(two["steady_rows_per_second"] / one["steady_rows_per_second"], 3),
        "ratio_overall": round(two["rows_per_second"] / one["rows_per_second"], 3),
        "at": time.strftime("%Y-%m-%d %H:%M"),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "cluster.json").write_text(json.dumps(result, indent=2))
    print(
        f"| cluster | rows/s steady | rows/s overall |\n| --- | --- | --- |\n"
        f"| one node (2 CPUs) | {one['steady_rows_per_second']:.1f} | {one['rows_per_second']:.1f} |\n"
        f"| two nodes (2 + 2 CPUs, same cores) | {two['steady_rows_per_second']:.1f} | {two['rows_per_second']:.1f} |\n"
        f"| ratio two / one | {result['ratio_steady']:.2f}x | {result['ratio_overall']:.2f}x |"
    )


if __name__ == "__main__":
    main()
