"""Listing and reading inputs, without Ray."""

from __future__ import annotations

import pyarrow as pa
import pytest
from corpora import jpeg_bytes, write_image_folder, write_table, write_webdataset

from pipeline.config import InputConfig, InputFormat
from pipeline.errors import LatentError
from pipeline.io.sources import filter_done_units, open_corpus, read_corpus_unit
from pipeline.io.webdataset import expand_braces


def input_config(path, **kw) -> InputConfig:
    return InputConfig(path=str(path), **{"files_per_task": 4, **kw})


def read_all(source, done=None) -> pa.Table:
    return pa.concat_tables([t for unit in source.units for t in read_corpus_unit(unit, done)])


def test_expand_braces():
    assert expand_braces("s-{00..02}.tar") == ["s-00.tar", "s-01.tar", "s-02.tar"]
    assert expand_braces("{a,b}/x{1..2}") == ["a/x1", "a/x2", "b/x1", "b/x2"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_image_folder_units_sidecars_and_ids(tmp_path):
    root = write_image_folder(tmp_path / "imgs", 10)
    (root / ".hidden.jpg").write_bytes(jpeg_bytes(1))
    source = open_corpus(input_config(root))
    assert source.format == InputFormat.images and source.has_texts and source.total_rows == 10
    assert [len(u["files"]) for u in source.units] == [4, 4, 2]
    table = read_all(source)
    assert table.column("id").to_pylist()[0] == "group0/img00000.jpg"
    assert table.column("text").to_pylist()[0] == "synthetic picture number 0"
    assert all(table.column("image").to_pylist())


def test_done_files_are_dropped_before_reading(tmp_path):
    root = write_image_folder(tmp_path / "imgs", 6)
    source = open_corpus(input_config(root))
    done = pa.array(["group0/img00000.jpg", "group1/img00001.jpg"])
    remaining = filter_done_units(source, done)
    assert remaining.total_rows == 4
    assert set(read_all(remaining).column("id").to_pylist()).isdisjoint(done.to_pylist())


def test_webdataset_folder_is_detected_and_read(tmp_path):
    root = write_webdataset(tmp_path / "wds", shards=2, per_shard=3)
    source = open_corpus(input_config(root))
    assert source.format == InputFormat.webdataset and len(source.units) == 2 and source.has_texts
    table = read_all(source, done=pa.array(["000000000"]))
    assert table.num_rows == 5 and "000000000" not in table.column("id").to_pylist()
    assert '"width": 96' in table.column("metadata").to_pylist()[0]


@pytest.mark.parametrize("suffix", [".parquet", ".csv", ".jsonl"])
def test_tables_guess_columns_and_derive_ids(tmp_path, suffix):
    write_table(tmp_path / "t" / f"a{suffix}", pa.table({"caption": ["x", "y", "z"], "score": [1, 2, 3]}))
    source = open_corpus(input_config(tmp_path / "t"))
    assert source.units[0]["columns"]["text"] == "caption" and not source.has_images
    table = read_all(source)
    assert table.column("id").to_pylist() == [f"a{suffix}:{i}" for i in range(3)]
    assert table.column("score").to_pylist() == [1, 2, 3]


def test_a_named_column_that_does_not_exist_is_named(tmp_path):
    write_table(tmp_path / "a.parquet", pa.table({"text": ["x"]}))
    with pytest.raises(LatentError, match="input.image_column"):
        open_corpus(input_config(tmp_path / "a.parquet", image_column="img"))


def test_inputs_without_anything_to_embed_are_refused(tmp_path):
    write_table(tmp_path / "a.parquet", pa.table({"n": [1]}))
    with pytest.raises(LatentError, match="neither an image nor a text column"):
        open_corpus(input_config(tmp_path / "a.parquet"))
    with pytest.raises(LatentError, match="does not exist"):
        open_corpus(input_config(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LatentError, match="found no images"):
        open_corpus(input_config(tmp_path / "empty"))
