"""`latent knn` on a real local Ray: complete output equal to Searcher's, errors recorded, dedup groups."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from index.helpers import build, captioned_dataset, dataset, vectors

from pipeline.cli import compose
from pipeline.errors import LatentError
from pipeline.io.shards import commit_table
from pipeline.search import Searcher
from pipeline.search.knn import run_knn
from pipeline.search.neighbours import GROUPS_SCHEMA, NEIGHBORS_SCHEMA, near_duplicate_groups


def knn(input_path, index, out, *extra: str):
    overrides = [f"input.path={input_path}", f"index.path={index}", f"output.path={out}", "ray.num_cpus=2"]
    overrides += ["ray.inline_max_rows=0"]  # the Ray path (small jobs default to inline)
    return run_knn(compose("knn", [*overrides, "progress=false", "model.device=cpu", *extra]))


def read(path) -> pa.Table:
    return pads.dataset(str(path), format="parquet").to_table()


def as_dict(table: pa.Table) -> dict[str, tuple[list[str], list[float]]]:
    return {r["query_id"]: (r["neighbor_ids"], r["scores"]) for r in table.to_pylist()}


def planted_duplicates(n: int = 400, groups: int = 8, seed: int = 3) -> tuple[np.ndarray, list[set[str]]]:
    """n clustered vectors plus, for ``groups`` of them, 1 or 2 slightly perturbed copies (cosine > 0.99)."""
    rng = np.random.default_rng(seed)
    x = vectors(n, seed=seed)
    copies, planted = [], []
    for g in range(groups):
        original = g * 37
        members = {f"v{original}"}
        for _ in range(1 + g % 2):
            copy = x[original] + 0.005 * rng.standard_normal(x.shape[1]).astype(np.float32)
            members.add(f"v{n + len(copies)}")
            copies.append(copy / np.linalg.norm(copy))
        planted.append(members)
    return np.concatenate([x, np.stack(copies)]).astype(np.float32), planted


@pytest.mark.parametrize("inline", [False, True], ids=["ray", "inline"])  # inline: ray.inline_max_rows, no Ray
def test_vector_knn_of_a_dataset_against_its_own_index_with_dedup(local_ray, tmp_path, inline):
    x, planted = planted_duplicates()
    data = dataset(tmp_path / "emb", x, rows_per_shard=100, dtype="float32")
    build(data, tmp_path / "idx", "index.factory=Flat")
    where = [f"ray.inline_max_rows={len(x) if inline else 0}"]
    summary = knn(data, tmp_path / "idx", tmp_path / "out", "k=5", "threshold=0.97", "batch_size=64", *where)
    (run,) = (tmp_path / "out" / "_latent" / "runs").iterdir()
    assert ("inline" in json.loads((run / "ray.json").read_text())) == inline
    assert summary.queries == len(x) and summary.errors == 0 and summary.kind == "vector"
    neighbours = read(tmp_path / "out" / "neighbors")
    assert neighbours.schema.remove_metadata() == NEIGHBORS_SCHEMA
    got = as_dict(neighbours)
    assert sorted(got) == sorted(f"v{i}" for i in range(len(x)))  # every query, once
    expected = Searcher.open(tmp_path / "idx").search(vectors=x, k=5, with_items=False)
    for i in range(len(x)):
        ids, scores = got[f"v{i}"]
        assert ids == expected.ids[i].tolist()
        np.testing.assert_allclose(scores, expected.scores[i], atol=1e-5)
    groups = read(tmp_path / "out" / "groups")
    assert groups.schema.remove_metadata() == GROUPS_SCHEMA
    found = [set(members) for members in groups.column("member_ids").to_pylist()]
    assert sorted(map(sorted, found)) == sorted(map(sorted, planted))
    assert groups.column("size").to_pylist() == [len(m) for m in groups.column("member_ids").to_pylist()]
    assert summary.groups == len(planted) and summary.duplicates == sum(len(p) - 1 for p in planted)
    assert (tmp_path / "out" / "_SUCCESS").exists()
    recorded = json.loads((tmp_path / "out" / "_latent" / "summary.json").read_text())
    assert recorded["queries"] == len(x) and recorded["groups"] == len(planted)
    again = knn(data, tmp_path / "idx", tmp_path / "out", "k=5", "threshold=0.97")
    assert again.already_complete and again.queries == len(x)


def test_text_queries_from_csv_equal_searcher_and_bad_rows_are_recorded(
    local_ray, tmp_path, photo_index, tiny_checkpoint
):
    texts = ["a photo of coffee", "a photo of rocket", "  ", "a cat playing jazz", "a photo of coins"]
    (tmp_path / "q.csv").write_text("caption,other\n" + "".join(f'"{t}",{i}\n' for i, t in enumerate(texts)))
    summary = knn(tmp_path / "q.csv", photo_index, tmp_path / "out", "k=3", f"model.pretrained={tiny_checkpoint}")
    assert (summary.queries, summary.errors, summary.kind) == (4, 1, "text")
    got = as_dict(read(tmp_path / "out" / "neighbors"))
    good = [i for i, t in enumerate(texts) if t.strip()]
    assert sorted(got) == sorted(f"q.csv:{i}" for i in good)  # ids: file and row
    searcher = Searcher.open(photo_index, compose("knn", ["input.path=x", "index.path=x", "output.path=x",
                                                          f"model.pretrained={tiny_checkpoint}"]).model)  # fmt: skip
    expected = searcher.search(texts=[texts[i] for i in good], k=3)
    for row, i in enumerate(good):
        assert got[f"q.csv:{i}"][0] == expected.ids[row].tolist()
        np.testing.assert_allclose(got[f"q.csv:{i}"][1], expected.scores[row], atol=1e-5)
    errors = read(tmp_path / "out" / "_errors").to_pylist()
    assert errors == [{"query_id": "q.csv:2", "error": "empty text"}]


def test_image_path_queries_from_jsonl(local_ray, tmp_path, photo_index, photos, tiny_checkpoint):
    rows = [{"id": "a", "image": str(photos / "coffee.jpg")}, {"id": "b", "image": "missing.jpg"},
            {"id": "c", "image": str(photos / "sub" / "chelsea.jpg")}]  # fmt: skip
    lines = [json.dumps(r) + "\n" for r in rows]
    (tmp_path / "q.jsonl").write_text("".join([*lines[:2], '{"id": "d", "image": \n', lines[2]]))  # a broken line
    summary = knn(tmp_path / "q.jsonl", photo_index, tmp_path / "out", "k=2", f"model.pretrained={tiny_checkpoint}")
    assert (summary.queries, summary.errors, summary.kind) == (2, 2, "image")
    got = as_dict(read(tmp_path / "out" / "neighbors"))
    assert got["a"][0][0] == "coffee.jpg" and got["c"][0][0] == "sub/chelsea.jpg"
    assert got["a"][1][0] == pytest.approx(1.0, abs=1e-4)
    errors = {e["query_id"]: e["error"] for e in read(tmp_path / "out" / "_errors").to_pylist()}
    assert "cannot read image file" in errors["b"]
    assert errors["q.jsonl:2"].startswith(f"malformed JSON at {tmp_path / 'q.jsonl'} line 3")


def test_an_integer_image_column_is_refused_naming_it(tmp_path, flat_index):
    pq.write_table(pa.table({"image": [1, 2]}), tmp_path / "q.parquet")
    with pytest.raises(LatentError, match="input.column: column 'image' holds int64"):
        knn(tmp_path / "q.parquet", flat_index, tmp_path / "out")


def test_groups_are_connected_components_of_pairs_above_threshold(tmp_path):
    rows = [
        ("a", ["a", "b", "z"], [1.0, 0.95, 0.2]),
        ("b", ["b", "c"], [1.0, 0.91]),  # a-b-c: one group through b
        ("d", ["e"], [0.99]),
        ("e", ["e", "d"], [1.0, 0.99]),
        ("f", ["g"], [0.89]),  # below the threshold: no group
        ("z", [], []),
    ]
    table = pa.table(
        {"query_id": [r[0] for r in rows], "neighbor_ids": [r[1] for r in rows], "scores": [r[2] for r in rows]}
    ).cast(NEIGHBORS_SCHEMA)
    commit_table(table.slice(0, 3), str(tmp_path))
    commit_table(table.slice(3), str(tmp_path))
    groups = near_duplicate_groups(str(tmp_path), 0.9)
    assert groups.to_pylist() == [
        {"group_id": 0, "size": 3, "member_ids": ["a", "b", "c"]},
        {"group_id": 1, "size": 2, "member_ids": ["d", "e"]},
    ]
    assert near_duplicate_groups(str(tmp_path), 0.999).num_rows == 0


def test_bad_configs_are_refused_before_any_work(tmp_path, flat_index, vector_corpus):
    path, _ = vector_corpus
    with pytest.raises(LatentError, match="threshold=1.5"):
        knn(path, flat_index, tmp_path / "out", "threshold=1.5")
    with pytest.raises(LatentError, match="k=0"):
        knn(path, flat_index, tmp_path / "out", "k=0")
    with pytest.raises(LatentError, match="input.column=nope: no such column"):
        knn(path, flat_index, tmp_path / "out", "input.column=nope")
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "numbers.parquet")
    with pytest.raises(LatentError, match="found no embedding, image or text column"):
        knn(tmp_path / "numbers.parquet", flat_index, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_stages_on_float16_embeddings_without_ray(tmp_path, flat_index, vector_corpus):
    """read_queries -> KnnBatches -> write_neighbours called directly, on a float16 embedding dataset."""
    from pipeline.search.neighbours import KnnBatches, write_neighbours
    from pipeline.search.queries import list_queries, read_queries

    x = vectors(300, seed=9)
    data = dataset(tmp_path / "emb16", x, rows_per_shard=120)  # float16, as `latent embed` writes by default
    cfg = compose("knn", [f"input.path={data}", f"index.path={flat_index}", f"output.path={tmp_path / 'out'}"])
    queries = list_queries(cfg)
    assert (queries.kind, queries.column, queries.id_column) == ("vector", "image_embedding", "id")
    assert queries.total_rows == 300
    searcher = KnnBatches(str(flat_index), None, k=4, kind="vector", threads=None)
    answered = [searcher(records) for unit in queries.units for records in read_queries(unit, None, rows=64)]
    assert sum(batch.num_rows for batch in answered) == 300
    for batch in answered:
        assert batch.column("error").null_count == batch.num_rows  # every query answered
        write_neighbours(batch, str(tmp_path / "out"))
    got = as_dict(read(tmp_path / "out" / "neighbors"))
    ids = sorted(got, key=lambda i: int(i[1:]))
    stored = np.stack([x[int(i[1:])] for i in ids]).astype(np.float16).astype(np.float32)
    expected = Searcher.open(flat_index).search(vectors=stored, k=4, with_items=False)
    assert [got[i][0] for i in ids] == expected.ids.tolist()


def test_null_query_vectors_are_recorded_as_error_rows_without_ray(tmp_path, flat_index):
    """modality=auto: a query table whose text_embedding is null where an image had no caption; those rows
    are error rows ("null vector"), the others are answered."""
    from pipeline.search.neighbours import KnnBatches
    from pipeline.search.queries import list_queries, read_queries

    texts, captioned = vectors(200, seed=5), np.arange(200) % 4 != 0
    data = captioned_dataset(tmp_path / "cap", vectors(200, seed=4), texts, captioned, 80)
    cfg = compose(
        "knn",
        [
            f"input.path={data}",
            f"index.path={flat_index}",
            f"output.path={tmp_path / 'out'}",
            "input.column=text_embedding",
        ],
    )
    queries = list_queries(cfg)
    searcher = KnnBatches(str(flat_index), None, k=3, kind="vector", threads=None)
    answered = pa.concat_tables(
        [searcher(records) for unit in queries.units for records in read_queries(unit, None, rows=64)]
    )
    errors = dict(zip(answered.column("query_id").to_pylist(), answered.column("error").to_pylist()))
    assert len(errors) == 200
    assert {i for i, e in errors.items() if e} == {f"v{r}" for r in np.flatnonzero(~captioned)}
    assert {e for e in errors.values() if e} == {"null vector"}
    hits = answered.filter(pc.is_null(answered.column("error")))
    expected = Searcher.open(flat_index).search(vectors=texts[captioned], k=3, with_items=False)
    order = np.argsort([int(i[1:]) for i in hits.column("query_id").to_pylist()])
    assert [hits.column("neighbor_ids")[int(o)].as_py() for o in order] == expected.ids.tolist()


def test_zero_and_nan_query_vectors_are_error_rows_named_as_in_the_map(flat_index):
    """The same reasons as a map's _errors (pipeline/io/vectors.py): one message a kind, in every job."""
    from pipeline.io.vectors import NOT_FINITE, ZERO
    from pipeline.search.neighbours import KnnBatches

    q = vectors(4, seed=9)
    q[1], q[2] = 0, np.nan
    batch = pa.table(
        {
            "query_id": ["a", "b", "c", "d"],
            "query": pa.FixedSizeListArray.from_arrays(pa.array(q.reshape(-1)), q.shape[1]),
            "error": pa.array([None] * 4, pa.string()),
        }
    )
    answered = KnnBatches(str(flat_index), None, k=3, kind="vector", threads=None)(batch)
    assert answered.column("error").to_pylist() == [None, ZERO, NOT_FINITE, None]
