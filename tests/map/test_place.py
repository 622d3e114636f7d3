"""Placement's stages as plain callables (no cluster), and a NaN row through the whole job."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from index.helpers import captioned_dataset
from synthetic import write_embedding_dataset

from map.conftest import clustered, map_config
from pipeline.map.build import run_map
from pipeline.map.layout import LandmarkIndex, sample_rows
from pipeline.map.place import PlaceBatches, read_unit
from pipeline.map.source import open_dataset
from pipeline.map.store import Landmarks, MapDirectory, points_schema, read_points, region_table


def unit_dict(unit, first_row=None):
    return {
        "name": unit.name,
        "start": unit.start,
        "rows": unit.rows,
        "shard": unit.shard,
        "first_row": first_row if first_row is not None else unit.start,
    }


def test_read_unit_numbers_rows_flags_nan_vectors_and_skips_done_rows(tmp_path):
    vectors, _ = clustered(300)
    vectors[7] = np.nan
    write_embedding_dataset(tmp_path / "emb", vectors, dtype="float32", rows_per_shard=300)
    source = open_dataset(str(tmp_path / "emb"), metric="ip")
    (unit,) = source.units
    records = pa.concat_tables(read_unit(unit_dict(unit), None, source))
    assert records.column("row").to_pylist() == list(range(300))
    assert records.column("error").to_pylist()[7] == "NaN or infinite vector"
    assert records.column("error").null_count == 299
    done = pa.array([str(r) for r in range(100)])  # the runner's done keys are strings
    rest = pa.concat_tables(read_unit(unit_dict(unit, first_row=1000), done, source))
    assert rest.column("row").to_pylist() == list(range(1000, 1300))  # numbered from first_row; none skipped
    rest = pa.concat_tables(read_unit(unit_dict(unit), done, source))
    assert rest.column("row").to_pylist() == list(range(100, 300))


def test_rows_with_a_null_vector_are_left_out_of_the_map_source(tmp_path):
    """modality=auto: text_embedding is null where an image had no caption; the map holds the other rows."""
    vectors, _ = clustered(500)
    captioned = np.arange(500) % 3 != 0
    captioned_dataset(tmp_path / "emb", vectors, vectors[::-1].copy(), captioned, 200)
    source = open_dataset(str(tmp_path / "emb"), "text_embedding", metric="ip")
    assert source.rows == captioned.sum() and sum(u.rows for u in source.units) == source.rows
    records = pa.concat_tables([t for u in source.units for t in read_unit(unit_dict(u), None, source)])
    assert records.column("row").to_pylist() == list(range(source.rows))
    rows = np.array([int(i[1:]) for i in records.column("id").to_pylist()])
    assert sorted(rows) == list(np.flatnonzero(captioned))
    got = np.stack(records.column("vector").to_numpy(zero_copy_only=False))
    np.testing.assert_array_equal(got, vectors[::-1][rows])
    taken, _ = source.take(np.array([0, source.rows - 1]))
    np.testing.assert_array_equal(taken, got[[0, -1]])


def test_placer_actor_places_good_rows_and_passes_errors_on(tmp_path):
    vectors, _ = clustered(400)
    rows = sample_rows(400, 100, 0)
    xy = np.random.default_rng(1).uniform(size=(100, 2)).astype(np.float32)
    labels = [np.zeros(100, np.int32), np.arange(100, dtype=np.int32) % 3]
    parents = [np.array([-1], np.int32), np.zeros(3, np.int32)]
    Landmarks(rows, vectors[rows], xy, labels, parents).save(tmp_path / "landmarks.npz")
    actor = PlaceBatches(str(tmp_path / "landmarks.npz"), "ip", 5, 0, True, threads=1)
    error = [None] * 400
    error[3] = "NaN or infinite vector"
    batch = pa.table(
        {
            "row": pa.array(np.arange(400, dtype=np.int64)),
            "id": [f"v{i}" for i in range(400)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1]),
            "error": pa.array(error, pa.string()),
        }
    )
    out = actor(batch)
    assert out.num_rows == 400 and out.column("error").to_pylist() == error
    x, y = out.column("x").to_numpy(), out.column("y").to_numpy()
    np.testing.assert_array_equal(np.stack([x, y], 1)[rows], xy)  # landmarks keep their own position
    np.testing.assert_array_equal(out.column("cluster_1").to_numpy()[rows], labels[1])
    index = LandmarkIndex(Landmarks.load(tmp_path / "landmarks.npz").vectors, xy, k=5)  # stored as float16
    expected, _, _ = index.place(vectors[10:11])
    np.testing.assert_allclose([x[10], y[10]], expected[0], rtol=1e-5)


def test_points_read_back_in_row_order_and_regions_come_from_them(tmp_path):
    schema = points_schema(2)
    rows = np.random.default_rng(0).permutation(90)
    for part in np.array_split(rows, 3):
        table = pa.table(
            {
                "row": part,
                "id": [f"v{r}" for r in part],
                "x": part.astype(np.float32),
                "y": np.zeros(len(part), np.float32),
                "cluster_0": (part % 2).astype(np.int32),
                "cluster_1": (part % 4).astype(np.int32),
            }
        )
        pq.write_table(table.cast(schema), tmp_path / f"part-{part[0]}.parquet")
    points = read_points(tmp_path, 2)
    assert points.column("row").to_pylist() == list(range(90))
    assert read_points(tmp_path, 2, ["id"]).column_names == ["id"]
    names = [["a", "b"], ["c", "d", "e", "f", "g"]]
    parents = [np.array([-1, -1], np.int32), np.array([0, 1, 0, 1, 0], np.int32)]
    clusters = region_table(points, names, parents).to_pandas()
    fine = clusters[clusters.level == 1].set_index("cluster")
    assert fine["size"].tolist() == [23, 23, 22, 22, 0]
    assert fine.loc[1, "x"] == np.mean([r for r in range(90) if r % 4 == 1])
    assert np.isnan(fine.loc[4, "x"])  # an empty region has no centroid
    assert fine["label"].tolist() == names[1] and fine["parent"].tolist() == parents[1].tolist()


def test_rows_with_nan_vectors_are_recorded_not_placed(tmp_path, local_ray):
    vectors, _ = clustered(1200)
    sampled = set(sample_rows(1200, 300, 0).tolist())
    bad = next(r for r in range(1200) if r not in sampled)  # a NaN landmark would fail the layout itself
    vectors[bad] = np.nan
    write_embedding_dataset(tmp_path / "emb", vectors, dtype="float32", rows_per_shard=1200)  # one shard: rows in order
    out = tmp_path / "map"
    args = ["map.method=pca", "map.landmarks=300", "map.labels=none", "quality.sample=0", "image=false"]
    summary = run_map(map_config(f"input.path={tmp_path / 'emb'}", f"output.path={out}", *args))
    found = MapDirectory(out)
    assert summary["rows"] == found.info.rows == 1199 and summary["errors"] == 1
    errors = pq.read_table(out / "_errors")
    assert errors.column("error").to_pylist() == ["NaN or infinite vector"]
    assert errors.column("id").to_pylist()[0] not in set(found.points(["id"]).column("id").to_pylist())


def test_a_map_made_before_map_place_keeps_its_placement_for_appends():
    from pipeline.map.store import MapInfo

    def info(params: dict) -> MapInfo:
        return MapInfo(
            source={}, method="landmarks", params=params, rows=0, levels=1, clusters=[1], landmarks=0, seeds={},
            metric="ip", labels="none", quality={}, timings={}, units=[], bounds=[0, 0, 1, 1],
        )  # fmt: skip

    assert info({"place_k": 15}).placement == "attract"  # written before the key: placed by attraction
    assert info({"place": "cell"}).placement == "cell"
    assert MapInfo.from_json(info({"place": "attract"}).to_json()).placement == "attract"
