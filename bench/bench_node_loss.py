"""Time from a node loss to full speed on the remaining node (issue 19).

    python bench/bench_node_loss.py [--images 600] [--kill-at 0.3] [--window 5] [--checkpoint ck.pt]

A real two-node Ray cluster on loopback (``tests/cluster/localcluster.py``: a head and a worker, 2 CPUs
declared each, their own raylets and temp dirs), ``latent embed`` of N JPEG crops of real photos
(``bench_embed.make_corpus``) joined to it with ``ray.address=``, with small commits (8 rows) so that the
committed rows trace the throughput. The tests' tiny open_clip model with random weights, unless
``--checkpoint`` (ViT-B-32 weights). Once ``--kill-at`` of the rows are committed, the worker's raylet and
its children get SIGKILL (the node dies at once). Prints the committed rows/s per window before and after
the kill, the longest stall after it (no commit: the death noticed, the actor released, its tasks
retried) and when it ended, and the pace from then to the end. Both fake nodes share this machine's
cores: the rates before and after compare two encoders with one on the same CPUs, not two machines with one.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "bench"), str(REPO / "tests")]
from bench_embed import make_corpus  # noqa: E402
from bench_jobs import committed  # noqa: E402
from cluster.localcluster import LocalCluster, cluster_env  # noqa: E402
from conftest import TINY_MODEL  # noqa: E402


def rates(trace: list[tuple[float, int]], start: float, end: float, window: float) -> list[tuple[float, float]]:
    """(window start, committed rows/s in it) for the windows from ``start`` to ``end``."""
    out = []
    t = start
    while t + window <= end:
        before = max((n for s, n in trace if s <= t), default=0)
        after = max((n for s, n in trace if s <= t + window), default=0)
        out.append((t, (after - before) / window))
        t += window
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--kill-at", type=float, default=0.3)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--checkpoint")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-node-loss")
    opts = parser.parse_args()
    corpus = make_corpus(opts.work / f"corpus{opts.images}", opts.images)
    out = opts.work / "out"
    subprocess.run(["rm", "-rf", str(out)], check=True)
    model = (
        ["model.name=ViT-B-32", f"model.pretrained={opts.checkpoint}"]
        if opts.checkpoint
        else [f"model.name={TINY_MODEL}", "model.pretrained=null"]
    )
    cluster = LocalCluster.start(head_cpus=2, worker_cpus=2)
    try:
        args = [sys.executable, "tests/tiny_cli.py", "embed", f"input.path={corpus}", f"output.path={out}", *model]
        args += ["batch_size=8", "output.rows_per_shard=8", "input.files_per_task=8", "progress=false"]
        args += [f"ray.address={cluster.address}"]
        started = time.monotonic()
        proc = subprocess.Popen(args, cwd=REPO, env=cluster_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        trace: list[tuple[float, int]] = []
        killed = None
        while proc.poll() is None:
            now = time.monotonic() - started
            trace.append((now, committed(out)))
            if killed is None and trace[-1][1] >= opts.kill_at * opts.images:
                cluster.kill_worker()
                killed = time.monotonic() - started
            time.sleep(0.5)
        end = time.monotonic() - started
        trace.append((end, committed(out)))
        assert proc.returncode == 0, proc.stderr.read().decode()[-3000:]
    finally:
        cluster.stop()
    assert killed is not None, "the job ended before the kill"
    first = next(s for s, n in trace if n > 0)
    at_kill = max(n for t, n in trace if t <= killed)
    # commits after the kill: the longest stretch without one is the stall (the node's death noticed, its
    # actor released, its tasks retried); from its end to the job's end, the pace on the remaining node
    commits = [killed] + [t for (t, n), (_, m) in zip(trace[1:], trace) if t > killed and n > m]
    gaps = [(b - a, b) for a, b in zip(commits, commits[1:])]
    stall, resumed = max(gaps) if gaps else (0.0, killed)
    resumed_rows = max(n for t, n in trace if t <= resumed)
    before = (at_kill - trace[0][1]) / (killed - first) if killed > first else 0.0
    after = (trace[-1][1] - resumed_rows) / (end - resumed) if end > resumed else 0.0
    print(f"first commit {first:.1f} s; kill at {killed:.1f} s ({at_kill} rows); end {end:.1f} s; rows {trace[-1][1]}")
    print(
        "committed rows/s per window:",
        " ".join(f"{r:.1f}" for _, r in rates(trace, first, killed, opts.window)),
        "| kill |",
        " ".join(f"{r:.1f}" for _, r in rates(trace, killed, end, opts.window)),
    )
    print(f"two nodes: {before:.1f} rows/s (first commit to kill); longest stall after the kill: {stall:.1f} s,")
    print(f"ending +{resumed - killed:.1f} s after the kill; then {after:.1f} rows/s on the remaining node to the end")


if __name__ == "__main__":
    main()
