"""Issue 18 on `latent map`: rows it cannot place go to _errors (NaN, zero vectors) and the rest is mapped,
an output inside the input is refused, a second writer of one output is refused, append keeps to its own
source and never maps an id twice. Tiny data, on the session's Ray."""

from __future__ import annotations

import glob
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import write_embedding_dataset

from map.conftest import clustered, map_config
from pipeline.errors import LatentError
from pipeline.io.publish import hold_target
from pipeline.map.build import run_map
from pipeline.map.store import MapDirectory

ROWS = 900
BAD = {"v10": "NaN", "v20": "zero", "v21": "zero", "v22": "zero"}
SMALL = ("quality.queries=200", "quality.reference=false", "image=false", "map.neighbors=10")


@pytest.fixture(scope="module")
def damaged(tmp_path_factory):
    vectors, _ = clustered(ROWS)
    vectors[10] = np.nan
    vectors[20:23] = 0
    path = tmp_path_factory.mktemp("bad") / "emb"
    write_embedding_dataset(path, vectors, dtype="float32", rows_per_shard=450)
    return path


def errors_of(found: MapDirectory) -> dict[str, str]:
    rows = [r for f in glob.glob(f"{found.path}/_errors/*.parquet") for r in pq.read_table(f).to_pylist()]
    return {r["id"]: r["error"] for r in rows}


@pytest.mark.parametrize("landmarks", [20000, 300])  # every row a landmark (the default on small data), a sample
def test_nan_and_zero_rows_go_to_errors_and_the_rest_is_mapped(local_ray, damaged, tmp_path, landmarks):
    out = tmp_path / "map"
    run_map(map_config(f"input.path={damaged}", f"output.path={out}", f"map.landmarks={landmarks}", *SMALL))
    found = MapDirectory(out)
    ids = set(found.points().column("id").to_pylist())
    assert len(ids) == ROWS - 4 and not ids & set(BAD)
    errors = errors_of(found)
    assert set(errors) == set(BAD)
    assert "NaN" in errors["v10"] and "zero vector" in errors["v20"]
    info = json.loads((out / "map.json").read_text())  # strict JSON: no bare NaN
    assert 0 < info["quality"]["preservation"] <= 1 and info["rows"] == ROWS - 4


def test_an_output_inside_the_input_is_refused_and_the_input_left_as_it_was(damaged):
    before = sorted(p.relative_to(damaged) for p in damaged.rglob("*"))
    for inside in (damaged, damaged / "map"):
        with pytest.raises(LatentError, match="inside input.path"):
            run_map(map_config(f"input.path={damaged}", f"output.path={inside}", *SMALL))
    assert sorted(p.relative_to(damaged) for p in damaged.rglob("*")) == before


def test_a_second_map_of_one_output_is_refused_while_the_first_runs(damaged, tmp_path):
    out = tmp_path / "map"
    # held as a first `latent map` holds it, up to its publish
    with hold_target(out, "output.path"), pytest.raises(LatentError, match="is being written by pid"):
        run_map(map_config(f"input.path={damaged}", f"output.path={out}", *SMALL))
    assert not out.exists()


def test_append_refuses_another_source_and_never_maps_an_id_twice(local_ray, tmp_path):
    vectors, _ = clustered(600)
    first, other = tmp_path / "first", tmp_path / "other"
    write_embedding_dataset(first, vectors[:400], dtype="float32", rows_per_shard=400)
    write_embedding_dataset(other, vectors[:400], dtype="float32", rows_per_shard=400)
    out = tmp_path / "map"
    run_map(map_config(f"input.path={first}", f"output.path={out}", "map.landmarks=200", *SMALL))
    with pytest.raises(LatentError, match="not of"):
        run_map(map_config(f"input.path={other}", f"output.path={out}", "map.mode=append", *SMALL))
    # a new shard holding 100 new rows and 50 ids already on the map (v350..v399)
    shard = pq.read_table(glob.glob(f"{first}/*.parquet")[0])
    again = shard.slice(350, 50)
    fresh = tmp_path / "fresh"
    write_embedding_dataset(fresh, vectors[400:500], dtype="float32", rows_per_shard=100, first_row=400)
    extra = pq.read_table(glob.glob(f"{fresh}/*.parquet")[0])
    pq.write_table(pa.concat_tables([extra, again.cast(extra.schema)]), f"{first}/zz-more.parquet")
    run_map(map_config(f"input.path={first}", f"output.path={out}", "map.mode=append", *SMALL))
    ids = MapDirectory(out).points().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 500
    errors = errors_of(MapDirectory(out))
    assert set(errors) == {f"v{i}" for i in range(350, 400)} and "already on the map" in errors["v350"]
