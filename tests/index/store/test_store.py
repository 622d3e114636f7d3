from __future__ import annotations

import json
import os
import threading

import faiss
import numpy as np
import pyarrow as pa
import pytest
from synthetic import ClusteredSpec, clustered_unit_vectors, fake_model

from pipeline.errors import LatentError
from pipeline.index.store.directory import IndexDirectory, ItemsWriter, StagedIndexDirectory, write_id_map
from pipeline.index.store.format import IDS_BATCH_ROWS, IDS_FILE, INDEX_FILE, INFO_FILE, ITEMS_FILE, IndexInfo, Recall
from pipeline.io.shards import EmbeddingInfo

SCHEMA = pa.schema([("id", pa.string(), False), ("source", pa.string()), ("text", pa.string()), ("n", pa.int64())])


def info_for(n: int, dim: int, factory: str, batch_rows: int) -> IndexInfo:
    return IndexInfo(
        dim=dim,
        metric="ip",
        factory=factory,
        ntotal=n,
        column="image_embedding",
        embedding=EmbeddingInfo.create(fake_model(dim), "float16", "image"),
        search_params={"nprobe": 4} if factory.startswith("IVF") else {},
        recall=Recall(k=10, value=1.0, queries=10, target=0.95),
        qps=1.0,
        memory_bytes=0,
        build_seconds=0.0,
        created_at="now",
        updated_at="now",
        created_by={},
        items_batch_rows=batch_rows,
    )


def write_directory(path, vectors: np.ndarray, ids: list[str], factory="Flat", batch_rows=7, chunk=5) -> None:
    """An index directory written through the store's own writer API, in uneven chunks."""
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    with StagedIndexDirectory(path) as stage:
        items = ItemsWriter(stage.file(ITEMS_FILE), SCHEMA, batch_rows=batch_rows)
        for start in range(0, len(ids), chunk):
            part = ids[start : start + chunk]
            rows = list(range(start, start + len(part)))
            items.write(
                pa.table(
                    {"id": part, "source": [f"s{r}" for r in rows], "text": pa.nulls(len(part), pa.string()), "n": rows}
                )
            )
        assert items.close() == len(ids)
        write_id_map(stage.file(IDS_FILE), pa.chunked_array([pa.array(ids)]))
        faiss.write_index(index, str(stage.file(INDEX_FILE)))
        stage.write_info(info_for(len(ids), vectors.shape[1], factory, batch_rows))
        stage.commit()


@pytest.fixture
def directory(tmp_path):
    vectors = clustered_unit_vectors(60, ClusteredSpec(dim=16, clusters=5, seed=3))
    ids = [f"item-{(i * 37) % 60:03d}" for i in range(60)]  # not in sorted order
    write_directory(tmp_path / "idx", vectors, ids)
    return tmp_path / "idx", vectors, ids


def test_items_are_aligned_with_labels_and_minus_one_is_null(directory):
    path, vectors, ids = directory
    d = IndexDirectory.open(path)
    labels = np.array([59, 0, -1, 7, 8, 6, 13, 59])
    table = d.items(labels)
    assert table.column_names == ["id", "source", "text", "n"]
    got = table.column("id").to_pylist()
    assert got == [ids[59], ids[0], None, ids[7], ids[8], ids[6], ids[13], ids[59]]
    assert table.column("n").to_pylist() == [59, 0, None, 7, 8, 6, 13, 59]
    assert list(d.ids(labels)) == got
    assert d.items(np.array([], dtype=np.int64)).num_rows == 0
    with pytest.raises(IndexError):
        d.items([60])


def test_search_then_ids_round_trip(directory):
    path, vectors, ids = directory
    d = IndexDirectory.open(path)
    assert len(d) == 60 and d.info.dim == 16 and d.info.embedding.model["name"] == "synthetic"
    _, labels = d.index.search(vectors[:5], 3)
    assert list(d.ids(labels[:, 0])) == ids[:5]
    assert d.ids(labels).shape == (5, 3) and d.ids(labels)[2, 0] == ids[2]


def test_label_of_every_id_and_unknown_ids(directory):
    path, _, ids = directory
    d = IndexDirectory.open(path)
    for label, id_ in enumerate(ids):
        assert d.label_of(id_) == label
    assert d.label_of("nope") is None and d.label_of("") is None and d.label_of("zzz") is None
    assert list(d.labels_of([ids[3], "nope"])) == [3, -1]
    assert d.all_ids().to_pylist() == sorted(ids)


def test_labels_of_many_ids_across_the_id_maps_batches(tmp_path):
    """The one id -> label lookup: ids from every record batch of ids.arrow, shuffled, unknown ids before, between
    and after the stored ones, a null, and an Arrow column (as append passes) give each stored id its label."""
    n = 3 * IDS_BATCH_ROWS + 17  # several batches of the sorted id map
    ids = [f"item-{i * 7919 % n:06d}" for i in range(n)]  # labels in another order than the ids
    vectors = clustered_unit_vectors(n, ClusteredSpec(dim=8, clusters=4, seed=5))
    write_directory(tmp_path / "idx", vectors, ids, batch_rows=IDS_BATCH_ROWS, chunk=5000)
    d = IndexDirectory.open(tmp_path / "idx")
    assert d._ids.num_record_batches == 4
    rng = np.random.default_rng(0)
    pick = rng.permutation(n)[:5000]
    asked = [ids[i] for i in pick] + ["a-before", "item-000000x", "zzz-after"]
    expected = np.concatenate([pick, [-1, -1, -1]])
    assert d.labels_of(asked).tolist() == expected.tolist()
    column = pa.chunked_array([pa.array(asked[:100]), pa.array([*asked[100:], None])])
    assert d.labels_of(column).tolist() == [*expected.tolist(), -1]
    assert d.labels_of([]).tolist() == []
    assert d.label_of(ids[-1]) == n - 1 and d.label_of("item-000000x") is None


def test_items_batches_are_fixed_size(directory):
    path, _, _ = directory
    reader = pa.ipc.open_file(pa.memory_map(str(path / ITEMS_FILE)))
    sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
    assert sizes == [7] * 8 + [4]


def test_index_is_memory_mapped_with_search_params(tmp_path):
    vectors = clustered_unit_vectors(2000, ClusteredSpec(dim=16, clusters=20, seed=1))
    write_directory(tmp_path / "ivf", vectors, [f"r{i}" for i in range(2000)], factory="IVF16,Flat", chunk=300)
    d = IndexDirectory.open(tmp_path / "ivf")
    assert faiss.extract_index_ivf(d.index).nprobe == 4
    assert IndexDirectory.open(tmp_path / "ivf", mmap=False).index.ntotal == 2000


def test_duplicate_ids_are_refused(tmp_path):
    with pytest.raises(LatentError, match="duplicate id 'b'"):
        write_id_map(tmp_path / "ids.arrow", pa.array(["a", "b", "c", "b"]))


def test_failed_write_leaves_nothing_and_the_old_index_untouched(directory):
    path, vectors, ids = directory
    before = {name: (path / name).read_bytes() for name in (INDEX_FILE, ITEMS_FILE, IDS_FILE, INFO_FILE)}
    with pytest.raises(RuntimeError, match="boom"), StagedIndexDirectory(path) as stage:
        (stage.file(INDEX_FILE)).write_bytes(b"partial")
        raise RuntimeError("boom")
    assert {name: (path / name).read_bytes() for name in before} == before
    assert sorted(os.listdir(path.parent)) == ["idx"]  # no staging litter


def test_replacing_is_one_exchange_and_an_open_reader_keeps_the_old_index(directory, monkeypatch):
    import pipeline.io.publish as publish

    path, vectors, ids = directory
    old = IndexDirectory.open(path)
    renames = []
    rename = os.rename
    monkeypatch.setattr(publish.os, "rename", lambda a, b: (renames.append((str(a), str(b))), rename(a, b))[1])
    write_directory(path, vectors[:30], [f"new-{i}" for i in range(30)])
    # atomic: one renameat2 exchange (Linux); never the two-rename fallback, which leaves no index between them
    assert not any(str(path) in pair for pair in renames), renames
    assert old.ids([0])[0] == ids[0] and old.index.ntotal == 60  # the open reader still sees the old index
    new = IndexDirectory.open(path)
    assert len(new) == 30 and new.ids([0])[0] == "new-0"
    assert sorted(os.listdir(path.parent)) == ["idx"]


def test_stale_staging_of_a_dead_writer_is_removed(directory):
    path, _, _ = directory
    stale = path.parent / ".idx.tmp-999999999-abcd"
    stale.mkdir()
    with StagedIndexDirectory(path):
        assert not stale.exists()


def test_commit_refuses_an_incomplete_directory(tmp_path):
    with pytest.raises(RuntimeError, match="lacks"), StagedIndexDirectory(tmp_path / "x") as stage:
        stage.commit()
    assert not (tmp_path / "x").exists()


def test_newer_format_is_refused(directory):
    path, _, _ = directory
    data = json.loads((path / INFO_FILE).read_text())
    data["format_version"] = 99
    (path / INFO_FILE).write_text(json.dumps(data))
    with pytest.raises(LatentError, match="newer"):
        IndexDirectory.open(path)


def test_not_an_index_directory(tmp_path):
    with pytest.raises(LatentError, match="not an index directory"):
        IndexDirectory.open(tmp_path)


def test_concurrent_readers(directory):
    path, _, ids = directory
    d = IndexDirectory.open(path)
    errors = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(50):
            labels = rng.integers(0, 60, 9)
            if list(d.ids(labels)) != [ids[i] for i in labels]:
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
