from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from pipeline.errors import LatentError
from pipeline.io.shards import EmbeddingInfo, arrow_to_vectors, commit_table, list_shards, read_info, vectors_to_arrow

MODEL = {"name": "m", "pretrained": None, "checkpoint_sha256": None, "dim": 8, "preprocess": {}}


def dataset(tmp_path, dtype: str, rng) -> tuple[np.ndarray, EmbeddingInfo]:
    vectors = rng.normal(size=(50, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    info = EmbeddingInfo.create(MODEL, dtype, "image")
    for start in (0, 25):
        table = pa.table(
            {
                "id": [f"r{i}" for i in range(start, start + 25)],
                "source": ["s"] * 25,
                "text": pa.nulls(25, pa.string()),
                "image_embedding": vectors_to_arrow(vectors[start : start + 25], dtype),
            }
        ).cast(info.shard_schema())
        commit_table(table, str(tmp_path))
    return vectors, info


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_embedding_reader_reads_shards_as_they_are(tmp_path, rng, dtype):
    from embedding_reader import EmbeddingReader

    vectors, _ = dataset(tmp_path, dtype, rng)
    reader = EmbeddingReader(
        str(tmp_path), file_format="parquet", embedding_column="image_embedding", meta_columns=["id"]
    )
    assert reader.count == 50 and reader.dimension == 8
    got, ids = [], []
    for batch, meta in reader(batch_size=100, show_progress=False):
        got.append(batch)
        ids += meta["id"].tolist()
    order = np.argsort([int(i[1:]) for i in ids])
    np.testing.assert_allclose(np.concatenate(got)[order], vectors, atol=1e-3 if dtype == "float16" else 0)


def test_read_info_from_shards_and_directory(tmp_path, rng):
    _, info = dataset(tmp_path, "float16", rng)
    assert read_info(str(tmp_path)) == info
    assert read_info(list_shards(str(tmp_path))[0]) == info


def test_commit_leaves_no_partial_file_visible(tmp_path, monkeypatch):
    import pipeline.io.shards as shards

    def write_half_then_fail(table, f, **kwargs):
        f.write(b"PAR1 half a shard")
        raise OSError("disk full")

    monkeypatch.setattr(shards.pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        commit_table(pa.table({"id": ["a"]}), str(tmp_path))
    assert list_shards(str(tmp_path)) == []


def test_newer_format_versions_are_refused():
    data = EmbeddingInfo.create(MODEL, "float16", "image")
    data.format_version = 99
    with pytest.raises(LatentError, match="newer"):
        EmbeddingInfo.from_json(data.to_json())


def test_mixed_dimensions_are_refused():
    column = pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32()))
    with pytest.raises(LatentError, match="mixed dimensions"):
        arrow_to_vectors(column)
