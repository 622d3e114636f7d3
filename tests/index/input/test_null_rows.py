"""Rows whose vector is null (`latent embed modality=auto`: images without a caption have no text_embedding)
are left out of the index, counted and reported; every indexed row keeps its own id."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from index.helpers import build, captioned_dataset, run_cli, vectors
from pipeline.errors import LatentError
from pipeline.index.input.read import iter_batches, read_rows, scan
from pipeline.index.store.directory import IndexDirectory
from pipeline.index.store.format import INFO_FILE
from pipeline.search import Searcher


def corpus(n: int, seed: int, null_share: float = 0.3):
    """Image and text vectors of ``n`` rows, and which rows have a caption (about 1 - null_share of them)."""
    captioned = np.random.default_rng(seed).random(n) >= null_share
    return vectors(n, seed=seed), vectors(n, seed=seed + 100), captioned


def assert_each_finds_itself(index_path, texts: np.ndarray, captioned: np.ndarray, first_row: int = 0) -> None:
    """Searching with each captioned row's own text vector returns that row's id (and item) first."""
    searcher = Searcher.open(index_path)
    rows = np.flatnonzero(captioned)
    result = searcher.search(vectors=texts[rows], k=1)
    assert [items[0]["id"] for items in result.items] == [f"v{first_row + r}" for r in rows]
    assert [items[0]["text"] for items in result.items] == [f"caption {first_row + r}" for r in rows]


def test_scan_counts_the_null_rows_and_the_reader_skips_them(tmp_path):
    images, texts, captioned = corpus(1000, seed=1)
    source = scan(str(captioned_dataset(tmp_path / "ds", images, texts, captioned, 300)), "text_embedding")
    assert (source.rows, source.null_rows) == (captioned.sum(), (~captioned).sum())
    assert sorted(s.rows + s.null_rows for s in source.files) == [100, 300, 300, 300]  # shard names are random
    batches = list(iter_batches(source, 64, metric="ip"))
    ids = [i for b in batches for i in b.items.column("id").to_pylist()]
    rows = np.array([int(i[1:]) for i in ids])
    assert sorted(rows) == list(np.flatnonzero(captioned))
    got = np.concatenate([b.vectors for b in batches])
    np.testing.assert_array_equal(got, texts[rows])
    assert [b.first for b in batches] == list(np.cumsum([0] + [len(b.vectors) for b in batches[:-1]]))
    picked = np.array([0, 1, len(rows) // 2, len(rows) - 1])  # global rows count rows with a vector only
    (read,) = read_rows(source, [picked], 50, "ip")
    np.testing.assert_array_equal(read, got[picked])


def test_null_rows_are_counted_without_parquet_statistics(tmp_path):
    """A foreign Parquet file written without statistics: the nulls are counted from the column."""
    x = vectors(50)
    column = pa.array([None if r % 5 == 0 else list(v) for r, v in enumerate(x)], pa.list_(pa.float32()))
    (tmp_path / "f").mkdir()
    pq.write_table(pa.table({"embedding": column}), tmp_path / "f" / "a.parquet", write_statistics=False)
    source = scan(str(tmp_path / "f"))
    assert (source.rows, source.null_rows) == (40, 10)
    ids = [i for b in iter_batches(source, 16, metric="ip") for i in b.items.column("id").to_pylist()]
    assert ids == [f"a:{r}" for r in range(50) if r % 5]  # default ids keep the row in the file


@pytest.mark.parametrize(
    "overrides",
    [
        ["index.factory=Flat"],
        ["index.factory=Flat", "index.shards=2", "parallel.min_vectors=null"],
        ["index.factory='IVF16,Flat'", "index.target_recall=0.5"],
    ],
    ids=["flat", "sharded", "ivf"],
)
def test_the_index_holds_exactly_the_rows_with_a_vector(tmp_path, overrides):
    images, texts, captioned = corpus(1000, seed=2)
    src = captioned_dataset(tmp_path / "ds", images, texts, captioned, 300)
    summary = build(src, tmp_path / "idx", "input.column=text_embedding", *overrides)
    present, missing = int(captioned.sum()), int((~captioned).sum())
    assert (summary.ntotal, summary.added, summary.null_rows, summary.input_rows) == (present, present, missing, 1000)
    assert f"{missing} rows with a null text_embedding left out" in summary.text()
    info = json.loads((tmp_path / "idx" / INFO_FILE).read_text())
    assert info["ntotal"] == present and info["history"][-1]["null_rows"] == missing
    d = IndexDirectory.open(tmp_path / "idx")
    assert d.label_of(f"v{np.flatnonzero(~captioned)[0]}") is None
    if "IVF" not in overrides[0]:  # exact: every row finds itself first
        assert_each_finds_itself(tmp_path / "idx", texts, captioned)


def test_a_column_with_no_vector_at_all_is_refused(tmp_path):
    images, texts, _ = corpus(400, seed=3)
    src = captioned_dataset(tmp_path / "ds", images, texts, np.zeros(400, dtype=bool), 150)
    with pytest.raises(LatentError, match=r"input.column=text_embedding: the column is null in all 400 rows"):
        build(src, tmp_path / "idx", "input.column=text_embedding")
    assert not (tmp_path / "idx").exists()


@pytest.mark.slow  # a `latent` process: out of `make test-fast`
def test_the_cli_refuses_an_all_null_column_with_exit_2(tmp_path):
    images, texts, _ = corpus(100, seed=4)
    src = captioned_dataset(tmp_path / "ds", images, texts, np.zeros(100, dtype=bool), 60)
    failed = run_cli(
        "index", f"input.path={src}", f"index.path={tmp_path / 'idx'}", "input.column=text_embedding",
        "progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert "the column is null in all 100 rows" in failed.stderr


def test_append_leaves_the_new_null_rows_out_and_keeps_every_id(tmp_path):
    images, texts, captioned = corpus(1200, seed=5)
    build(captioned_dataset(tmp_path / "a", images[:600], texts[:600], captioned[:600], 250), tmp_path / "idx",
          "input.column=text_embedding", "index.factory=Flat")  # fmt: skip
    new = captioned_dataset(tmp_path / "b", images[600:], texts[600:], captioned[600:], 250, first_row=600)
    summary = build(new, tmp_path / "idx", "input.column=text_embedding", "index.mode=append")
    missing = int((~captioned[600:]).sum())
    assert (summary.added, summary.null_rows, summary.ntotal) == (600 - missing, missing, int(captioned.sum()))
    info = json.loads((tmp_path / "idx" / INFO_FILE).read_text())
    assert [h.get("null_rows") for h in info["history"]] == [int((~captioned[:600]).sum()), missing]
    assert_each_finds_itself(tmp_path / "idx", texts, captioned)


def test_the_ray_add_leaves_the_same_rows_out_as_the_serial_add(local_ray, tmp_path):
    images, texts, captioned = corpus(3000, seed=6)
    src = captioned_dataset(tmp_path / "ds", images, texts, captioned, 700)
    common = ["input.column=text_embedding", "index.factory='IVF16,Flat'", "index.target_recall=0.5"]
    serial = build(src, tmp_path / "serial", *common, "parallel.min_vectors=null")
    ray = build(src, tmp_path / "ray", *common, "parallel.min_vectors=0", "parallel.tasks=2")
    assert ray.ray_tasks == 2 and ray.ntotal == serial.ntotal == captioned.sum()
    assert ray.null_rows == serial.null_rows == (~captioned).sum()
    a, b = IndexDirectory.open(tmp_path / "serial"), IndexDirectory.open(tmp_path / "ray")
    assert a.items(np.arange(a.info.ntotal)).equals(b.items(np.arange(b.info.ntotal)))
    ids = a.ids(np.arange(a.info.ntotal))
    rows = np.array([int(i[1:]) for i in ids])
    assert sorted(rows) == list(np.flatnonzero(captioned))
