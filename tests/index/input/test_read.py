from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import fake_model, write_npy_folder

from index.helpers import dataset, vectors
from pipeline.errors import LatentError
from pipeline.index.input.read import iter_batches, read_rows, scan
from pipeline.io.shards import EmbeddingInfo, commit_table, vectors_to_arrow


def all_rows(source, metric="ip"):
    batches = list(iter_batches(source, 128, metric=metric))
    return np.concatenate([b.vectors for b in batches]), pa.concat_tables([b.items for b in batches])


def test_embedding_dataset_streams_every_row_with_its_items(tmp_path):
    x = vectors(2500)
    source = scan(str(dataset(tmp_path / "ds", x, rows_per_shard=700)))
    assert (source.kind, source.column, source.dim, source.rows) == ("parquet", "image_embedding", 32, 2500)
    assert source.embedding.model["name"] == "synthetic"
    assert source.item_schema.names == ["id", "source", "text", "group"]
    got, items = all_rows(source)
    rows = np.array([int(i[1:]) for i in items.column("id").to_pylist()])  # ids are v<row>
    assert sorted(rows) == list(range(2500))
    np.testing.assert_allclose(got, x[rows], atol=2e-3)  # stored as float16
    assert items.column("text")[0].as_py() == f"vector {rows[0]}"
    picked, others = np.array([0, 699, 700, 2499]), np.array([5, 700, 1800])
    first, second = read_rows(source, [picked, others], 256, "ip")
    np.testing.assert_array_equal(first, got[picked])
    np.testing.assert_array_equal(second, got[others])


def test_npy_folder_ids_are_stem_and_row(tmp_path):
    x = vectors(1000)
    write_npy_folder(tmp_path / "npy", x, rows_per_file=400)
    source = scan(str(tmp_path / "npy"))
    assert (source.kind, source.column, source.rows, source.embedding) == ("npy", "embedding", 1000, None)
    got, items = all_rows(source)
    np.testing.assert_array_equal(got, x)
    assert items.column("id").to_pylist()[:2] == ["emb_00000:0", "emb_00000:1"]
    assert items.column("id").to_pylist()[400] == "emb_00001:0"


def test_clip_retrieval_output_with_metadata(tmp_path):
    x = vectors(600)
    root = tmp_path / "cr"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    for i, (a, b) in enumerate([(0, 250), (250, 600)]):
        np.save(root / "img_emb" / f"img_emb_{i}.npy", x[a:b].astype(np.float16))
        pq.write_table(
            pa.table({"image_path": [f"img/{r}.jpg" for r in range(a, b)], "caption": [f"c{r}" for r in range(a, b)]}),
            root / "metadata" / f"metadata_{i}.parquet",
            row_group_size=100,  # row groups smaller than the read batches
        )
    for path in (root, root / "img_emb"):
        source = scan(str(path))
        assert source.column == "img_emb" and source.rows == 600
        got, items = all_rows(source)
        np.testing.assert_allclose(got, x, atol=2e-3)
        assert items.column("source").to_pylist()[300] == "img/300.jpg"
        assert items.column("text").to_pylist()[300] == "c300"
        assert items.column("id").to_pylist()[300] == "img_emb_1:50"
        assert "image_path" in items.column_names and "caption" in items.column_names


def test_clip_retrieval_misaligned_metadata_is_refused(tmp_path):
    root = tmp_path / "cr"
    (root / "img_emb").mkdir(parents=True)
    (root / "metadata").mkdir()
    np.save(root / "img_emb" / "img_emb_0.npy", vectors(10))
    pq.write_table(pa.table({"caption": ["x"] * 9}), root / "metadata" / "metadata_0.parquet")
    with pytest.raises(LatentError, match="aligned"):
        scan(str(root))


def foreign_table(x: np.ndarray, **columns) -> pa.Table:
    flat = pa.array(x.reshape(-1).astype(np.float32))
    return pa.table(
        {
            **columns,
            "embedding": pa.ListArray.from_arrays(pa.array(np.arange(len(x) + 1) * x.shape[1], pa.int32()), flat),
        }
    )


def test_foreign_parquet_with_variable_lists_and_no_ids(tmp_path):
    x = vectors(300)
    (tmp_path / "f").mkdir()
    pq.write_table(foreign_table(x, url=[f"u{i}" for i in range(300)]), tmp_path / "f" / "a.parquet")
    source = scan(str(tmp_path / "f"))
    assert source.dim == 32 and source.embedding is None and source.column == "embedding"
    got, items = all_rows(source)
    np.testing.assert_allclose(got, x, rtol=1e-6)
    assert items.column("id").to_pylist()[5] == "a:5" and items.column("source").to_pylist()[5] == "u5"


def test_several_embedding_columns_are_listed(tmp_path):
    x = vectors(20)
    info = EmbeddingInfo.create(fake_model(32), "float32", "both")
    table = pa.table(
        {
            "id": [str(i) for i in range(20)],
            "source": ["s"] * 20,
            "text": ["t"] * 20,
            "image_embedding": vectors_to_arrow(x, "float32"),
            "text_embedding": vectors_to_arrow(x, "float32"),
        }
    ).cast(info.shard_schema())
    commit_table(table, str(tmp_path / "both"))
    with pytest.raises(LatentError, match="several embedding columns: image_embedding, text_embedding"):
        scan(str(tmp_path / "both"))
    assert scan(str(tmp_path / "both"), "text_embedding").column == "text_embedding"
    with pytest.raises(LatentError, match="input.column=nope: no such column"):
        scan(str(tmp_path / "both"), "nope")


def test_missing_column_is_named(tmp_path):
    (tmp_path / "p").mkdir()
    pq.write_table(pa.table({"id": ["a"], "vec": [[1.0, 0.0]]}), tmp_path / "p" / "a.parquet")
    with pytest.raises(LatentError, match="no embedding column.*columns: id, vec"):
        scan(str(tmp_path / "p"))


def test_empty_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentError, match="empty dataset"):
        scan(str(tmp_path / "empty"))
    (tmp_path / "zero").mkdir()
    info = EmbeddingInfo.create(fake_model(32), "float16", "image")
    commit_table(info.shard_schema().empty_table(), str(tmp_path / "zero"))
    with pytest.raises(LatentError, match="empty dataset"):
        scan(str(tmp_path / "zero"))
    with pytest.raises(LatentError, match="no such file"):
        scan(str(tmp_path / "absent"))


def test_mixed_dimensions_across_shards(tmp_path):
    dataset(tmp_path / "mixed", vectors(100, dim=32))
    dataset(tmp_path / "mixed", vectors(100, dim=16), first_row=100)
    with pytest.raises(LatentError, match="mixed (dimensions|models)"):
        scan(str(tmp_path / "mixed"))
    (tmp_path / "npy").mkdir()
    np.save(tmp_path / "npy" / "a.npy", vectors(10, dim=8))
    np.save(tmp_path / "npy" / "b.npy", vectors(10, dim=16))
    with pytest.raises(LatentError, match="mixed dimensions: b.npy has 16-d"):
        scan(str(tmp_path / "npy"))


def test_mixed_dimensions_inside_a_variable_list_column(tmp_path):
    (tmp_path / "v").mkdir()
    lists = [[1.0, 0.0], [0.0, 1.0, 0.0]]
    pq.write_table(pa.table({"embedding": lists}), tmp_path / "v" / "a.parquet")
    source = scan(str(tmp_path / "v"))
    with pytest.raises(LatentError, match="mixed dimensions"):
        all_rows(source)


def test_mixed_models_across_shards(tmp_path):
    dataset(tmp_path / "m", vectors(100), model=fake_model(32, "model-a"))
    dataset(tmp_path / "m", vectors(100), model=fake_model(32, "model-b"), first_row=100)
    with pytest.raises(LatentError, match="mixed models.*model.name"):
        scan(str(tmp_path / "m"))


def test_shards_with_and_without_model_metadata(tmp_path):
    dataset(tmp_path / "m", vectors(100))
    pq.write_table(
        foreign_table(vectors(10), id=[f"x{i}" for i in range(10)]).rename_columns(["id", "image_embedding"]),
        tmp_path / "m" / "zz.parquet",
    )
    with pytest.raises(LatentError, match="no embedding metadata"):
        scan(str(tmp_path / "m"))


@pytest.mark.parametrize(("bad", "message"), [(np.nan, "NaN or infinite"), (np.inf, "NaN or infinite")])
def test_non_finite_vectors_are_named_by_file_and_row(tmp_path, bad, message):
    x = vectors(300)
    x[257, 3] = bad
    write_npy_folder(tmp_path / "npy", x, rows_per_file=200)
    source = scan(str(tmp_path / "npy"))
    with pytest.raises(LatentError, match=f"emb_00001.npy: row 57 has {message}"):
        all_rows(source)


def test_unnormalised_vectors_need_metric_l2(tmp_path):
    x = vectors(100) * 3.0
    write_npy_folder(tmp_path / "npy", x, rows_per_file=100)
    source = scan(str(tmp_path / "npy"))
    with pytest.raises(LatentError, match="row 0 is not unit-length .*index.metric=l2"):
        all_rows(source, "ip")
    got, _ = all_rows(source, "l2")
    np.testing.assert_array_equal(got, x)


def test_any_fsspec_filesystem(tmp_path):
    import fsspec

    x = vectors(300)
    local = dataset(tmp_path / "ds", x, rows_per_shard=100)
    memory = fsspec.filesystem("memory")
    for path in sorted(local.glob("*.parquet")):
        memory.pipe(f"/remote-ds/{path.name}", path.read_bytes())
    source = scan("memory://remote-ds")
    assert source.rows == 300 and all(s.path.startswith("memory://") for s in source.files)
    got, items = all_rows(source)
    expected, _ = all_rows(scan(str(local)))
    np.testing.assert_array_equal(got, expected)
