"""`latent map` end to end on a clustered corpus with known groups: real Ray, FAISS, umap-learn."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score
from synthetic import iter_clustered_groups, write_embedding_dataset

from map.conftest import SPEC, clustered, map_config
from pipeline.errors import LatentError
from pipeline.map.build import run_map
from pipeline.map.store import MapDirectory


def rows_of(ids: list[str]) -> np.ndarray:
    return np.array([int(i[1:]) for i in ids])


@pytest.fixture(scope="module")
def built(grouped, tmp_path_factory, local_ray):
    path, groups = grouped
    out = tmp_path_factory.mktemp("map") / "map"
    run_map(map_config(f"input.path={path}", f"output.path={out}"))
    return MapDirectory(out), groups


def test_map_holds_every_row_with_regions_that_agree_with_the_known_groups(built):
    found, groups = built
    points = found.points()
    info = found.info
    assert points.num_rows == info.rows == len(groups)
    assert len(set(points.column("id").to_pylist())) == len(groups)
    rows = rows_of(points.column("id").to_pylist())
    coarse, fine = points.column("cluster_0").to_numpy(), points.column("cluster_1").to_numpy()
    ari = adjusted_rand_score(groups[rows], coarse)
    assert ari >= 0.8, ari
    # levels nest: every point's fine region has its coarse region as parent
    clusters = found.clusters().to_pandas()
    parent = clusters[clusters.level == 1].set_index("cluster")["parent"]
    assert (parent.loc[fine].to_numpy() == coarse).all()
    for level in (0, 1):
        table = clusters[clusters.level == level]
        assert table["size"].sum() == len(groups)
        assert len(table) == info.clusters[level]
        assert table["label"].str.len().min() > 0
    assert info.clusters[1] > info.clusters[0] >= 2
    # centroids are the mean position of their points
    x = points.column("x").to_numpy()
    c0 = clusters[(clusters.level == 0) & (clusters.cluster == 0)].iloc[0]
    assert np.isclose(c0.x, x[coarse == 0].mean(), rtol=1e-3, atol=1e-3)


def test_map_json_records_source_method_quality_and_timings(built):
    found, _ = built
    info = json.loads((found.path / "map.json").read_text())
    assert info["format_version"] == 2
    assert info["source"]["kind"] == "dataset" and info["source"]["rows"] == 6000 and info["source"]["sha256"]
    assert info["method"] == "landmarks" and info["landmarks"] == 1500
    assert info["seeds"]["landmarks"] == 0
    quality = info["quality"]
    assert 0 < quality["preservation"] <= 1 and 0 < quality["reference_preservation"] <= 1
    assert 0 < quality["preservation_all_rows"] <= 1  # the same queries' nearest among all rows
    assert quality["sample"] == 1500
    # what the relative figure compares against is said (a fit of the sample alone, not of every row)
    assert quality["reference"] == "umap-learn's fit of the quality sample alone"
    # the global arrangement, per level: each region's 3 nearest regions kept, for the map, umap-learn and PCA
    for key in ("regions_kept", "reference_regions_kept", "pca_regions_kept"):
        assert len(quality[key]) == info["levels"] and all(v is None or 0 <= v <= 1 for v in quality[key])
    assert any(v is not None for v in quality["regions_kept"]) and quality["regions_k"] == 3
    assert {"layout_s", "place_s", "knn_graph_s", "total_s", "graph_pieces"} <= set(info["timings"])
    assert (found.path / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(found.path.parent.glob(".map.tmp-map-*"))  # nothing left staged


def test_seeded_layout_is_reproducible(built, grouped, tmp_path):
    found, _ = built
    path, _ = grouped
    again = tmp_path / "again"
    run_map(map_config(f"input.path={path}", f"output.path={again}", "quality.sample=0", "image=false"))
    a, b = found.points(), MapDirectory(again).points()
    assert a.column("id").equals(b.column("id"))
    np.testing.assert_array_equal(a.column("x").to_numpy(), b.column("x").to_numpy())
    np.testing.assert_array_equal(a.column("cluster_1").to_numpy(), b.column("cluster_1").to_numpy())


def test_append_places_new_rows_and_moves_no_existing_point(tmp_path, local_ray):
    vectors, _ = clustered(3000)
    emb = tmp_path / "emb"
    write_embedding_dataset(emb, vectors, dtype="float32", rows_per_shard=1000)
    out = tmp_path / "map"
    run_map(map_config(f"input.path={emb}", f"output.path={out}", "quality.sample=500", "image=false"))
    before = MapDirectory(out).points().to_pandas().set_index("id")
    more = np.concatenate([c for c, _ in iter_clustered_groups(4000, SPEC)])[3000:]
    write_embedding_dataset(emb, more, dtype="float32", rows_per_shard=1000, first_row=3000)
    run_map(map_config(f"input.path={emb}", f"output.path={out}", "map.mode=append", "image=false"))
    after = MapDirectory(out)
    table = after.points().to_pandas().set_index("id")
    assert len(table) == 4000 and after.info.rows == 4000
    kept = table.loc[before.index]
    np.testing.assert_array_equal(kept["x"].to_numpy(), before["x"].to_numpy())
    np.testing.assert_array_equal(kept["y"].to_numpy(), before["y"].to_numpy())
    np.testing.assert_array_equal(kept["cluster_1"].to_numpy(), before["cluster_1"].to_numpy())
    np.testing.assert_array_equal(kept["row"].to_numpy(), before["row"].to_numpy())
    assert sorted(table["row"]) == list(range(4000))  # new rows numbered after the mapped ones, each once
    new = table.drop(before.index)
    assert len(new) == 1000 and np.isfinite(new[["x", "y"]].to_numpy()).all()
    assert [h["mode"] for h in after.info.history] == ["create", "append"]
    assert after.clusters().to_pandas().query("level == 0")["size"].sum() == 4000


@pytest.mark.slow  # several `latent map` processes
def test_bad_inputs_are_refused_and_nothing_is_published(tmp_path, grouped):
    path, _ = grouped
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LatentError, match="empty"):
        run_map(map_config(f"input.path={empty}", f"output.path={tmp_path / 'm1'}"))
    mixed = tmp_path / "mixed"
    shutil.copytree(path, mixed)
    write_embedding_dataset(mixed, np.eye(8, 16, dtype=np.float32), dtype="float32", first_row=90000)
    with pytest.raises(LatentError, match="(?i)mixed|dimension"):
        run_map(map_config(f"input.path={mixed}", f"output.path={tmp_path / 'm2'}"))
    with pytest.raises(LatentError, match="zero_shot"):
        run_map(map_config(f"input.path={path}", f"output.path={tmp_path / 'm3'}", "map.labels=zero_shot"))
    with pytest.raises(LatentError, match="exactly one"):
        run_map(map_config(f"output.path={tmp_path / 'm4'}"))
    assert not any((tmp_path / m).exists() for m in ("m1", "m2", "m3", "m4"))


def test_cli_exit_code_2_on_bad_input(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "map", f"input.path={empty}", f"output.path={tmp_path / 'm'}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "empty dataset" in proc.stderr and not (tmp_path / "m").exists()
