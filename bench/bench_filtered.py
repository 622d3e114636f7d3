"""Filtered search: recall and speed of ``Searcher.search(where=...)`` against exact filtered search.

    python bench/bench_filtered.py --n 200000 --dim 64                    # `latent index` defaults
    python bench/bench_filtered.py --n 200000 --dim 64 --factory HNSW32,Flat
    python bench/bench_filtered.py --index /tmp/idx --corpus /tmp/emb --sweep 0.5,0.75,1.0

Writes the check's clustered corpus (tests/synthetic.py) as Parquet with three metadata columns
(``cat``: 1000 values, ``num``: a random permutation of the rows, ``ts``: a timestamp), runs `latent index`
on it, then for each selectivity (``num < s * n``, uncorrelated with the vectors) measures, over fresh
queries in one batch: the plan the planner picks, its recall@10 against brute force over the matched
rows' original vectors, its QPS, unfiltered QPS, and exact search over the matched subset's QPS
(reconstructed vectors, as the exact plan does). ``--sweep`` forces the filtered plan at several IVF
exponents instead (how IVF_EXPONENT was measured). JSON to bench/results/filtered-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
SELECTIVITIES = (0.5, 0.1, 0.05, 0.01, 0.005, 0.001, 0.0001)


def write_corpus(path: Path, n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    from tests.synthetic import ClusteredSpec, clustered_unit_vectors

    spec = ClusteredSpec(dim=dim, clusters=max(16, n // 500), seed=seed)
    x = clustered_unit_vectors(n + 1000, spec)
    rng = np.random.default_rng(seed)
    num = rng.permutation(n)
    path.mkdir(parents=True, exist_ok=True)
    start = dt.datetime(2020, 1, 1)
    for s, lo in enumerate(range(0, n, 50_000)):
        hi = min(n, lo + 50_000)
        table = pa.table(
            {
                "id": [f"item-{i}" for i in range(lo, hi)],
                "embedding": pa.FixedSizeListArray.from_arrays(pa.array(x[lo:hi].reshape(-1)), dim),
                "cat": [f"c{v % 1000:03d}" for v in num[lo:hi]],
                "num": num[lo:hi],
                "ts": pa.array([start + dt.timedelta(minutes=int(v)) for v in num[lo:hi]], pa.timestamp("s")),
            }
        )
        pq.write_table(table, path / f"part-{s:05d}.parquet")
    return x[:n], x[n:]


def timed(fn, repeat: int = 3) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, min(k, int((t >= 0).sum())))
        for f, t in zip(found, truth)
    ]
    return float(np.mean(hits))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--factory", default="auto")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default="/tmp/bench-filtered")
    ap.add_argument("--sweep", default="", help="comma-separated IVF exponents: force the filtered plan")
    a = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    from pipeline.search import Searcher
    from pipeline.search import plan as planner

    work = Path(a.work)
    corpus, index = work / f"emb-{a.n}x{a.dim}", work / f"idx-{a.n}x{a.dim}-{re.sub(r'[^A-Za-z0-9]+', '_', a.factory)}"
    x, queries = write_corpus(corpus, a.n, a.dim)
    queries = queries[: a.queries]
    if not index.exists():
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pipeline.cli", "index", f"input.path={corpus}", f"index.path={index}",
               f"index.factory='{a.factory}'", "progress=false"]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        print(f"latent index: {time.perf_counter() - started:.1f} s")
    s = Searcher.open(index)
    num = pq.read_table(corpus, columns=["num"]).column("num").to_numpy()
    k = 10
    t_all, _ = timed(lambda: s.search(vectors=queries, k=k, with_items=False))
    rows = []
    print(f"{s.info.factory} {s.info.search_params}  unfiltered {len(queries) / t_all:.0f} QPS  "
          f"metadata {s.info.metadata['bytes_per_row']} B/row")  # fmt: skip
    for sel in SELECTIVITIES:
        where = f"num < {max(1, int(sel * a.n))}"
        sub = np.flatnonzero(num < max(1, int(sel * a.n)))
        _, truth = faiss.knn(queries, x[sub], min(k, len(sub)), metric=faiss.METRIC_INNER_PRODUCT)
        truth = np.where(truth >= 0, sub[np.maximum(truth, 0)], -1)
        # the index's labels follow the input's rows, except the held-out tune queries: map by id
        label_of = s.directory.labels_of([f"item-{i}" for i in sub])
        truth = np.where(truth >= 0, label_of[np.searchsorted(sub, np.maximum(truth, 0))], -1)
        mask = s.columns.mask(where)[1]
        t_exact, _ = timed(
            lambda m=mask: planner._exact(s.directory.index, np.flatnonzero(m), queries, k, s.info.metric)
        )
        row = {"selectivity": sel, "matched": len(sub), "exact_subset_qps": round(len(queries) / t_exact, 1)}
        if a.sweep:
            for exponent in (float(e) for e in a.sweep.split(",")):
                planner.IVF_EXPONENT = exponent
                plan = planner.plan_search(s.directory.index, mask, k, where, s.info.qps, s.info.exact_qps)
                plan.kind = "filtered"
                t, (_, labels) = timed(
                    lambda p=plan, m=mask: planner.run_plan(p, s.directory.index, m, queries, k, s.info.metric)
                )
                got = recall(labels, truth, k)
                row[f"exp{exponent}"] = {
                    "recall": round(got, 4),
                    "qps": round(len(queries) / t, 1),
                    "params": plan.params,
                }
        else:
            t, result = timed(lambda w=where: s.search(vectors=queries, k=k, where=w, with_items=False))
            found = s.directory.labels_of([h for row_ in result.ids for h in row_ if h is not None])
            labels = np.full(result.ids.shape, -1)
            labels[result.ids != None] = found  # noqa: E711 (object array)
            got = recall(labels, truth, k)
            row.update(plan=result.plan["kind"], params=result.plan["params"], recall=round(got, 4),
                       qps=round(len(queries) / t, 1), vs_unfiltered=round(t_all / t, 3))  # fmt: skip
        print(json.dumps(row))
        rows.append(row)
    out = ROOT / "bench" / "results" / f"filtered-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"n": a.n, "dim": a.dim, "factory": s.info.factory, "search_params": s.info.search_params,
                               "unfiltered_qps": round(len(queries) / t_all, 1), "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
