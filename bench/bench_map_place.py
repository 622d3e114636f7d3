"""Placement quality at small scale: how well rows placed from landmarks keep their neighbours, before and
after the refinement, against umap-learn's full fit of the same sample (the figure map.json compares with).

    python bench/bench_map_place.py                       # 50k x 512, 5k landmarks, 5k-row quality sample
    python bench/bench_map_place.py --n 40000 --landmarks 4000 --sample 4000 --clusters 200

The corpus is the map benchmark's (ClusteredSpec, 512-d, --clusters in 20 groups); landmarks and the quality
sample are drawn as `latent map` draws them (seeds 0 and 1), laid out by the same umap_layout, and landmark
rows of the sample keep their own position. Placement speed: rows per CPU-second, one thread, 8192-row batches.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.index.synthetic import ClusteredSpec, clustered_unit_vectors  # noqa: E402
from pipeline.map.layout import PLACE_EPOCHS, LandmarkIndex, knn_graph, sample_rows, umap_layout  # noqa: E402
from pipeline.map.quality import neighbourhood_preservation, reference_preservation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50000)
    parser.add_argument("--landmarks", type=int, default=5000)
    parser.add_argument("--sample", type=int, default=5000)
    parser.add_argument("--clusters", type=int, default=1000)
    args = parser.parse_args()
    import faiss

    faiss.omp_set_num_threads(1)
    vectors = clustered_unit_vectors(args.n, ClusteredSpec(clusters=args.clusters))
    rows = sample_rows(args.n, args.landmarks, 0)
    xy = umap_layout(vectors[rows], knn=knn_graph(vectors[rows], 16), seed=0)
    sample = sample_rows(args.n, args.sample, 1)
    own = np.isin(sample, rows)
    reference, seconds = reference_preservation(vectors[sample], queries=len(sample))
    print(f"{args.n} x 512, {args.landmarks} landmarks, sample {args.sample}: umap-learn full fit {reference:.4f}")
    for k, epochs in [(8, 0), (15, 0), (15, PLACE_EPOCHS)]:
        index = LandmarkIndex(vectors[rows], xy, k=k, epochs=epochs)
        placed, _, _ = index.place(vectors[sample])
        placed[own] = xy[np.searchsorted(rows, sample[own])]
        ours = neighbourhood_preservation(vectors[sample], placed, queries=len(sample))
        started = time.process_time()
        for first in range(0, min(args.n, 40000), 8192):
            index.place(vectors[first : first + 8192])
        speed = min(args.n, 40000) / (time.process_time() - started)
        relative = ours / reference
        print(f"place_k={k:2d} epochs={epochs:2d}: {ours:.4f} = {relative:.1%} of umap-learn; {speed:.0f} rows/CPU-s")


if __name__ == "__main__":
    main()
