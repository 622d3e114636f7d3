"""A map of an index's items: built beside the index, stale once the index changes, brought up to date by append."""

from __future__ import annotations

import numpy as np
import pytest
from index.helpers import build, dataset, run_cli, vectors

from map.conftest import map_config
from pipeline.cli import compose
from pipeline.errors import LatentError
from pipeline.map.build import run_map
from pipeline.map.source import open_index
from pipeline.map.store import MapDirectory, default_map_path
from pipeline.search import Searcher
from pipeline.serve.routes.map import find_map


def test_index_map_goes_stale_when_the_index_grows_and_append_brings_it_back(tmp_path, local_ray):
    x = vectors(1400)
    emb = dataset(tmp_path / "emb", x[:1000], dtype="float32")
    idx = tmp_path / "idx"
    build(emb, idx, "index.factory=Flat")
    run_map(map_config(f"index.path={idx}", "map.landmarks=400", "quality.sample=300", "image=false"))
    beside = MapDirectory(default_map_path(idx))
    assert beside.info.rows == 1000
    beside.check_fresh(open_index(str(idx)).fingerprint(), "the index")
    before = beside.points().to_pandas().set_index("id")

    dataset(emb, x[1000:], dtype="float32", first_row=1000)
    build(emb, idx, "index.mode=append")
    with pytest.raises(LatentError, match="stale.*append"):
        MapDirectory(default_map_path(idx)).check_fresh(open_index(str(idx)).fingerprint(), "the index")
    proc = run_cli("serve", f"index.path={idx}", f"map.path={default_map_path(idx)}", "port=0")
    assert proc.returncode == 2 and "map.mode=append" in proc.stderr, proc.stderr
    why: list[str] = []  # found by itself: left out, and /map says to append (create would be refused)
    assert find_map(Searcher.open(idx), compose("serve", [f"index.path={idx}"]), why) is None
    assert "stale" in why[0] and "map.mode=append" in why[0]

    run_map(map_config(f"index.path={idx}", "map.mode=append", "image=false"))
    after = MapDirectory(default_map_path(idx))
    after.check_fresh(open_index(str(idx)).fingerprint(), "the index")
    table = after.points().to_pandas().set_index("id")
    assert len(table) == 1400
    np.testing.assert_array_equal(table.loc[before.index, "x"].to_numpy(), before["x"].to_numpy())


def test_map_create_refuses_to_overwrite_and_overwrite_replaces(tmp_path, local_ray):
    emb = dataset(tmp_path / "emb", vectors(600), dtype="float32")
    out = tmp_path / "m"
    args = [f"input.path={emb}", f"output.path={out}", "map.landmarks=300", "quality.sample=0", "image=false"]
    run_map(map_config(*args, "map.method=pca"))
    assert MapDirectory(out).info.method == "pca"
    with pytest.raises(LatentError, match="already holds a map"):
        run_map(map_config(*args))
    run_map(map_config(*args, "map.mode=overwrite", "map.method=umap"))
    assert MapDirectory(out).info.method == "umap" and MapDirectory(out).info.landmarks == 600
