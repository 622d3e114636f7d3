"""Batch-job benchmark (issue 19): wall time, time to the first committed row, rows lost by kill -9.

    python bench/bench_jobs.py --images 20 500 [--code PATH] [--kills 0] (--checkpoint ck.pt | --tiny)

For each corpus size, `latent embed` with default settings (ViT-B-32, a local checkpoint of random
weights, CPU) on JPEG crops of real photos (bench_embed.make_corpus): the wall time of the command and
the time until the first Parquet shard appears under the output. ``--code`` runs another checkout's
code (PYTHONPATH), e.g. main before a change. ``--kills N``: N runs of the largest corpus killed with
SIGKILL at a random moment while rows are encoded (uniform between the progress bar's first count and the
end of the measured run; a kill during start-up loses nothing and says nothing); "lost" is rows the
progress bar had counted but no committed shard held (work a rerun redoes). ``--tiny``: the tests' tiny
open_clip model with random weights instead of ViT-B-32 (many rows per commit window in little time).
Prints one Markdown row per run.
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


def counted(log: Path) -> int:
    """The progress bar's last count of encoded rows."""
    counts = re.findall(r"\| *(\d+)/\d+ ", log.read_text(errors="replace").replace("\r", "\n"))
    return max((int(n) for n in counts), default=0)


def run(corpus: Path, out: Path, code: Path, checkpoint: str | None, kill_after: float | None = None) -> dict:
    """One `latent embed` (``checkpoint`` None: the tiny model); ``kill_after``: SIGKILL that many seconds
    after the progress bar's first count."""
    shutil.rmtree(out, ignore_errors=True)
    args = [sys.executable, "-m", "pipeline.cli", "embed", f"input.path={corpus}", f"output.path={out}"]
    args += ["model.name=ViT-B-32", f"model.pretrained={checkpoint}"]
    if checkpoint is None:
        args[1:3] = [str(REPO / "tests" / "tiny_cli.py")]
        args[-2:] = ["model.name=latent-tiny-vit", "model.pretrained=null"]  # tests/conftest.py's TINY_MODEL
    env = {**os.environ, "PYTHONPATH": str(code)}
    log_path = Path(str(out) + ".log")
    log = log_path.open("w")
    started = time.monotonic()
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=code, start_new_session=True)
    first = first_count = None
    while proc.poll() is None:
        now = time.monotonic() - started
        if first is None and list(out.glob("*.parquet")):
            first = now
        if first_count is None and counted(log_path):
            first_count = now
        if kill_after is not None and first_count is not None and now - first_count > kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        time.sleep(0.25)
    wall = time.monotonic() - started
    log.close()
    return {
        "wall": wall,
        "first": first,
        "first_count": first_count,
        "rc": proc.returncode,
        "seen": counted(log_path),
        "committed": committed(out),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, nargs="+", default=[20, 500])
    parser.add_argument("--code", type=Path, default=REPO)
    parser.add_argument("--kills", type=int, default=0)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint")
    model.add_argument("--tiny", action="store_true")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "bench-jobs")
    opts = parser.parse_args()
    runs = {}
    for n in opts.images:
        corpus = make_corpus(opts.work / f"corpus{n}", n)
        r = run(corpus, opts.work / f"out{n}", opts.code, opts.checkpoint)
        runs[n] = r
        first = f"{r['first']:.1f}" if r["first"] is not None else "end"
        print(f"| {opts.code} | {n} | {r['wall']:.1f} | {first} | rc {r['rc']} |", flush=True)
    n = max(opts.images)
    corpus = make_corpus(opts.work / f"corpus{n}", n)
    full = runs.get(n)
    for _ in range(opts.kills):
        full = full or run(corpus, opts.work / "full", opts.code, opts.checkpoint)
        encoding = full["wall"] - full["first_count"]  # from the first counted row to the end
        at = random.uniform(0, encoding)
        r = run(corpus, opts.work / "killed", opts.code, opts.checkpoint, kill_after=at)
        lost = max(0, r["seen"] - r["committed"])
        print(
            f"| {at:.1f} s into ~{encoding:.0f} s of encoding | counted {r['seen']} | committed {r['committed']} "
            f"| lost {lost} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
