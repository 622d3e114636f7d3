"""Filtered search: recall and speed of ``Searcher.search(where=...)`` against exact filtered search.

    python bench/bench_filtered.py --n 200000 --dim 64                    # `latent index` defaults
    python bench/bench_filtered.py --n 200000 --dim 64 --factory HNSW32,Flat
    python bench/bench_filtered.py --index /tmp/idx --corpus /tmp/emb --sweep 0.5,0.75,1.0
    python bench/bench_filtered.py --n 200000 --dim 64 --lancedb          # + LanceDB on the same data and filters

Writes the check's clustered corpus (tests/synthetic.py) as Parquet with three metadata columns
(``cat``: 1000 values, ``num``: a random permutation of the rows, ``ts``: a timestamp), runs `latent index`
on it, then for each selectivity (``num < s * n``, uncorrelated with the vectors) measures, over fresh
queries in one batch: the plan the planner picks, its recall@10 against brute force over the matched
rows' original vectors, its QPS, unfiltered QPS, and exact search over the matched subset's QPS
(reconstructed vectors, as the exact plan does). ``--sweep`` forces the filtered plan at several IVF
exponents instead (how IVF_EXPONENT was measured). ``--lancedb`` (``pip install lancedb``: a benchmark-only
dependency, not the project's) loads the same Parquet into a LanceDB table with an IVF_PQ index (cosine:
``dot`` on the unit vectors; ``sqrt(n)`` partitions, ``dim/8`` sub-vectors; the first of (nprobes,
refine_factor) = (20, 10), (40, 20), (80, 40), (160, 80) reaching latent's 0.95 unfiltered recall@10 target) and a
BTREE index on ``num``, and runs the same predicates pre-filtered (``where(..., prefilter=True)``), all
queries in one call as latent's batch. JSON to bench/results/filtered-<time>.json.
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


def write_corpus(path: Path, n: int, dim: int, seed: int = 0, write: bool = True) -> tuple[np.ndarray, np.ndarray]:
    from tests.synthetic import ClusteredSpec, clustered_unit_vectors

    spec = ClusteredSpec(dim=dim, clusters=max(16, n // 500), seed=seed)
    x = clustered_unit_vectors(n + 1000, spec)
    rng = np.random.default_rng(seed)
    num = rng.permutation(n)
    if not write:
        return x[:n], x[n:]
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


REPEAT = [3]  # best of this many runs (--repeat)


def timed(fn, repeat: int = 0) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat or REPEAT[0]):
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


LANCE_SETTINGS = ((20, 10), (40, 20), (80, 40), (160, 80))  # (nprobes, refine_factor), tried in order


class Lance:
    """The same corpus in LanceDB: IVF_PQ on the vectors, a BTREE on ``num``, queried as latent is."""

    def __init__(self, path: Path, corpus: Path, n: int, dim: int) -> None:
        import warnings

        import lancedb
        import pyarrow.dataset as pads

        warnings.filterwarnings("ignore", category=DeprecationWarning)
        db = lancedb.connect(str(path))
        self.build_s = None  # this run's build, if it built the table
        if "items" not in db.table_names():
            started = time.perf_counter()
            source = pads.dataset(str(corpus), format="parquet")
            schema = pa.schema(
                [
                    pa.field("id", pa.string()),
                    pa.field("vector", pa.list_(pa.float32(), dim)),
                    pa.field("num", pa.int64()),
                ]
            )

            def batches():
                for b in source.to_batches(columns=["id", "embedding", "num"], batch_size=50_000):
                    yield pa.RecordBatch.from_arrays(
                        [b.column(0), b.column(1).cast(schema.field("vector").type), b.column(2).cast(pa.int64())],
                        schema=schema,
                    )

            table = db.create_table("items", data=batches(), schema=schema)
            table.create_index(
                metric="dot", num_partitions=max(1, int(n**0.5)), num_sub_vectors=max(1, dim // 8), index_type="IVF_PQ"
            )
            table.create_scalar_index("num")
            self.build_s = time.perf_counter() - started
        self.table = db.open_table("items")
        self.nprobes, self.refine = LANCE_SETTINGS[0]

    def search(self, queries: np.ndarray, k: int, where: str | None) -> list[list[str]]:
        query = self.table.search(queries).nprobes(self.nprobes).refine_factor(self.refine)
        if where is not None:
            query = query.where(where, prefilter=True)
        got = query.limit(k).select(["id"]).to_arrow()
        out: list[list[str]] = [[] for _ in range(len(queries))]
        for q, id in zip(got.column("query_index").to_pylist(), got.column("id").to_pylist()):
            out[q].append(id)
        return out


def lance_recall(ids: list[list[str]], truth_ids: list[list[str]], k: int) -> float:
    return float(np.mean([len(set(f) & set(t)) / max(1, min(k, len(t))) for f, t in zip(ids, truth_ids)]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--factory", default="auto")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--work", default="/tmp/bench-filtered")
    ap.add_argument("--sweep", default="", help="comma-separated IVF exponents: force the filtered plan")
    ap.add_argument("--lancedb", action="store_true", help="LanceDB side by side (pip install lancedb)")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many timings")
    ap.add_argument("--build-only", action="store_true", help="write the corpus, build the indexes, stop")
    ap.add_argument("--selectivities", default="", help="comma-separated fractions (default: 50 %% .. 0.01 %%)")
    a = ap.parse_args()
    REPEAT[0] = a.repeat
    sys.path.insert(0, str(ROOT))
    from pipeline.search import Searcher
    from pipeline.search import plan as planner

    work = Path(a.work)
    corpus, index = work / f"emb-{a.n}x{a.dim}", work / f"idx-{a.n}x{a.dim}-{re.sub(r'[^A-Za-z0-9]+', '_', a.factory)}"
    if corpus.exists():  # written by an earlier run: the same seed gives the same vectors
        x, queries = write_corpus(corpus, a.n, a.dim, write=False)
    else:
        x, queries = write_corpus(corpus, a.n, a.dim)
    queries = queries[: a.queries]
    build_s = None
    if not index.exists():
        started = time.perf_counter()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        cmd = [sys.executable, "-m", "pipeline.cli", "index", f"input.path={corpus}", f"index.path={index}",
               f"index.factory='{a.factory}'", "progress=false"]  # fmt: skip
        subprocess.run(cmd, check=True, env=env, capture_output=True)
        build_s = round(time.perf_counter() - started, 1)
        print(f"latent index: {build_s} s")
    if a.build_only:
        if a.lancedb:
            Lance(work / f"lance-{a.n}x{a.dim}", corpus, a.n, a.dim)
        return
    s = Searcher.open(index)
    num = pq.read_table(corpus, columns=["num"]).column("num").to_numpy()
    k = 10
    t_all, _ = timed(lambda: s.search(vectors=queries, k=k, with_items=False))
    rows = []
    print(f"{s.info.factory} {s.info.search_params}  unfiltered {len(queries) / t_all:.0f} QPS  "
          f"metadata {s.info.metadata['bytes_per_row']} B/row")  # fmt: skip
    ids_of = np.array([f"item-{i}" for i in range(a.n)], dtype=object)
    lance, lance_summary = None, None
    if a.lancedb:
        lance = Lance(work / f"lance-{a.n}x{a.dim}", corpus, a.n, a.dim)
        _, truth_all = faiss.knn(queries, x, k, metric=faiss.METRIC_INNER_PRODUCT)
        truth_ids = [ids_of[t].tolist() for t in truth_all]
        for lance.nprobes, lance.refine in LANCE_SETTINGS:  # the first that reaches latent's target unfiltered
            t_lance, got_ids = timed(lambda: lance.search(queries, k, None))
            if lance_recall(got_ids, truth_ids, k) >= 0.95:
                break
        lance_summary = {
            "build_s": lance.build_s and round(lance.build_s, 1),
            "nprobes": lance.nprobes,
            "refine_factor": lance.refine,
            "unfiltered_recall": round(lance_recall(got_ids, truth_ids, k), 4),
            "unfiltered_qps": round(len(queries) / t_lance, 1),
        }
        print("lancedb", json.dumps(lance_summary))
    selectivities = [float(v) for v in a.selectivities.split(",")] if a.selectivities else SELECTIVITIES
    for sel in selectivities:
        where = f"num < {max(1, int(sel * a.n))}"
        sub = np.flatnonzero(num < max(1, int(sel * a.n)))
        _, local_truth = faiss.knn(queries, x[sub], min(k, len(sub)), metric=faiss.METRIC_INNER_PRODUCT)
        truth = np.where(local_truth >= 0, sub[np.maximum(local_truth, 0)], -1)
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
        if lance is not None:
            t_l, got_ids = timed(lambda w=where: lance.search(queries, k, w))
            truth_sub = [[ids_of[sub[j]] for j in row_ if j >= 0] for row_ in local_truth]
            row["lancedb"] = {
                "recall": round(lance_recall(got_ids, truth_sub, k), 4),
                "qps": round(len(queries) / t_l, 1),
            }
        print(json.dumps(row))
        rows.append(row)
    out = ROOT / "bench" / "results" / f"filtered-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"n": a.n, "dim": a.dim, "factory": s.info.factory, "search_params": s.info.search_params,
                               "unfiltered_qps": round(len(queries) / t_all, 1), "build_s": build_s,
                               "metadata_bytes_per_row": s.info.metadata["bytes_per_row"],
                               "lancedb": lance_summary, "rows": rows}, indent=2))  # fmt: skip
    print(out)


if __name__ == "__main__":
    main()
