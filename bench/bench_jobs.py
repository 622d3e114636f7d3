"""Batch-job benchmark (issue 19): wall time, time to the first committed row, rows lost by kill -9.

    python bench/bench_jobs.py --images 20 500 [--code PATH] [--kills 0] [--checkpoint ck.pt]

For each corpus size, `latent embed` with default settings (ViT-B-32, a local checkpoint of random
weights, CPU) on JPEG crops of real photos (bench_embed.make_corpus): the wall time of the command and
the time until the first Parquet shard appears under the output. ``--code`` runs another checkout's
code (PYTHONPATH), e.g. main before a change. ``--kills N``: N runs of the largest corpus killed with
SIGKILL at a random moment (20-95 % of its measured wall time); "lost" is rows the progress bar had
counted but no committed shard held (work a rerun redoes). Prints one Markdown row per run.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.dataset as pads

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
from bench_embed import make_corpus  # noqa: E402


def committed(out: Path) -> int:
    shards = list(out.glob("*.parquet"))
    return pads.dataset([str(s) for s in shards], format="parquet").count_rows() if shards else 0


def run(corpus: Path, out: Path, code: Path, checkpoint: str, kill_after: float | None = None) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "pipeline.cli", "embed", f"input.path={corpus}", f"output.path={out}"]
    args += ["model.name=ViT-B-32", f"model.pretrained={checkpoint}"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    log = open(str(out) + ".log", "w+")  # noqa: SIM115  (read back after the process ends)
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=code, start_new_session=True)
    first = None
    while proc.poll() is None:
        if first is None and list(out.glob("*.parquet")):
            first = time.monotonic() - started
        if kill_after is not None and time.monotonic() - started > kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.25)
    wall = time.monotonic() - started
    log.seek(0)
    counts = [int(n) for n in re.findall(r"\| *(\d+)/\d+ ", log.read().replace("\r", "\n"))]
    return {
        "wall": wall,
        "first": first,
        "rc": proc.returncode,
        "seen": max(counts, default=0),
        "committed": committed(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--code", type=Path, default=REPO)
    parser.add_argument("--kills", type=int, default=0)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-jobs")
    opts = parser.parse_args()
    walls = {}
    for n in opts.images:
        corpus = make_corpus(opts.work / f"corpus{n}", n)
        r = run(corpus, opts.work / f"out{n}", opts.code, opts.checkpoint)
        walls[n] = r["wall"]
        first = f"{r['first']:.1f}" if r["first"] is not None else "end"
        print(f"| {opts.code} | {n} | {r['wall']:.1f} | {first} | rc {r['rc']} |", flush=True)
    n = max(opts.images)
    corpus = make_corpus(opts.work / f"corpus{n}", n)
    full = walls.get(n)
    for _ in range(opts.kills):
        full = full or run(corpus, opts.work / "full", opts.code, opts.checkpoint)["wall"]
        at = random.uniform(0.2, 0.95) * full
        r = run(corpus, opts.work / "killed", opts.code, opts.checkpoint, kill_after=at)
        lost = max(0, r["seen"] - r["committed"])
        print(f"| kill at {at:.0f} s of ~{full:.0f} | counted {r['seen']} | committed {r['committed']} | lost {lost} |")


if __name__ == "__main__":
    main()
