"""Searcher on real indexes: exact-search equality, the recorded model as query encoder, bad queries."""

from __future__ import annotations

import io
import json
import shutil

import faiss
import numpy as np
import pyarrow.dataset as pads
import pytest
from index.helpers import build, dataset, vectors
from PIL import Image
from synthetic import write_npy_folder

from pipeline.encode.encoder import ClipEncoder
from pipeline.encode.model import resolve_model
from pipeline.errors import LatentError
from pipeline.search import QueryError, Searcher
from search.helpers import model_config


def noisy_queries(x: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q = x[rng.choice(len(x), n, replace=False)] + 0.05 * rng.standard_normal((n, x.shape[1])).astype(np.float32)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def test_vector_search_equals_exact_search(flat_index, vector_corpus):
    _, x = vector_corpus
    searcher = Searcher.open(flat_index)
    assert (searcher.dim, searcher.ntotal, len(searcher)) == (32, 2000, 2000)
    q = noisy_queries(x, 50)
    result = searcher.search(vectors=q, k=10)
    truth_scores, truth_labels = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert result.scores.shape == result.ids.shape == (50, 10) and result.scores.dtype == np.float32
    assert result.ids.tolist() == [[f"v{label}" for label in row] for row in truth_labels]
    np.testing.assert_allclose(result.scores, truth_scores, atol=1e-5)
    first = result.items[0][0]
    row = int(truth_labels[0, 0])
    assert first == {
        "id": f"v{row}",
        "source": f"synthetic/{row}",
        "text": f"vector {row}",
        "group": row % 7,
        "score": pytest.approx(float(truth_scores[0, 0]), abs=1e-5),
    }
    assert [len(hits) for hits in result.items] == [10] * 50


def test_queries_are_normalised_and_one_vector_is_one_query(flat_index, vector_corpus):
    _, x = vector_corpus
    searcher = Searcher.open(flat_index)
    unit = searcher.search(vectors=x[:3], k=5)
    scaled = searcher.search(vectors=(x[:3] * 7.5).tolist(), k=5)  # array-like, not unit length
    assert scaled.ids.tolist() == unit.ids.tolist() and unit.ids[:, 0].tolist() == ["v0", "v1", "v2"]
    np.testing.assert_allclose(scaled.scores, unit.scores, atol=1e-5)
    single = searcher.search(vectors=x[1], k=5)
    assert single.ids.tolist() == unit.ids[1:2].tolist()
    bare = searcher.search(vectors=x[:3], k=5, with_items=False)
    assert bare.ids.tolist() == unit.ids.tolist() and bare.items == [[], [], []]


def test_ivf_index_is_searched_with_its_tuned_parameters(vector_corpus, tmp_path):
    path, x = vector_corpus
    build(path, tmp_path / "ivf", "index.factory='IVF32,Flat'", "index.target_recall=0.95")
    searcher = Searcher.open(tmp_path / "ivf")
    assert searcher.info.search_params.get("nprobe", 1) > 1
    q = noisy_queries(x, 100, seed=2)
    result = searcher.search(vectors=q, k=10)
    direct = faiss.read_index(str(tmp_path / "ivf" / "index.faiss"))
    faiss.ParameterSpace().set_index_parameters(direct, searcher.info.search_params_string())
    scores, labels = direct.search(q, 10)
    assert result.ids.tolist() == searcher.directory.ids(labels).tolist()
    np.testing.assert_allclose(result.scores, scores, atol=1e-5)
    _, truth = faiss.knn(q, x, 10, metric=faiss.METRIC_INNER_PRODUCT)
    recall = np.mean([len(set(a) & {f"v{t}" for t in b}) / 10 for a, b in zip(result.ids.tolist(), truth)])
    assert recall >= 0.9
    stored = searcher.vector("v5")  # IVF,Flat reconstructs exactly, once it has a direct map
    np.testing.assert_allclose(stored, x[5], atol=1e-6)


def test_k_above_the_index_size_is_bounded_by_it(photo_index):
    searcher = Searcher.open(photo_index, model_config())
    result = searcher.search(vectors=np.ones((2, 32), np.float32), k=8)
    assert result.scores.shape == (2, 6) and result.ids.shape == (2, 6)  # 6 items: no padding allocated
    assert np.isfinite(result.scores).all() and None not in result.ids
    assert [len(hits) for hits in result.items] == [6, 6]
    assert (np.diff(result.scores[:, :6], axis=1) <= 1e-6).all()  # best first


def test_item_and_vector_of_an_id(flat_index, vector_corpus):
    _, x = vector_corpus
    searcher = Searcher.open(flat_index)
    assert searcher.item("v42") == {"id": "v42", "source": "synthetic/42", "text": "vector 42", "group": 0}
    assert searcher.item("nope") is None and searcher.vector("nope") is None
    np.testing.assert_allclose(searcher.vector("v42"), x[42], atol=1e-6)
    again = searcher.search(vectors=searcher.vector("v42"), k=1)
    assert again.ids[0, 0] == "v42"


def test_text_queries_use_the_recorded_model(photo_index, photo_embeddings, tiny_model, tiny_checkpoint):
    searcher = Searcher.open(photo_index, model_config(tiny_checkpoint))
    texts = ["a photo of chelsea", "a photo of a rocket"]
    expected = ClipEncoder(resolve_model(tiny_model, str(tiny_checkpoint))).encode_texts(texts)
    np.testing.assert_allclose(searcher.encode_texts(texts), expected, atol=1e-6)
    by_text = searcher.search(texts=texts, k=3)
    by_vector = searcher.search(vectors=expected, k=3)
    assert by_text.ids.tolist() == by_vector.ids.tolist()
    np.testing.assert_allclose(by_text.scores, by_vector.scores, atol=1e-5)
    # the dataset's own text embeddings of those captions are the same vectors
    table = pads.dataset(str(photo_embeddings), format="parquet").to_table().to_pylist()
    stored = {row["text"]: np.asarray(row["text_embedding"], np.float32) for row in table}
    np.testing.assert_allclose(expected[0], stored["a photo of chelsea"], atol=2e-5)


def test_image_queries_by_path_bytes_and_pil_agree_and_find_themselves(photo_index, photos, tiny_checkpoint):
    searcher = Searcher.open(photo_index, model_config(tiny_checkpoint))
    path = photos / "coffee.jpg"
    data = path.read_bytes()
    results = [searcher.search(images=[query], k=3) for query in (path, str(path), data, Image.open(io.BytesIO(data)))]
    for result in results[1:]:
        assert result.ids.tolist() == results[0].ids.tolist()
        np.testing.assert_allclose(result.scores, results[0].scores, atol=1e-6)
    assert results[0].ids[0, 0] == "coffee.jpg" and results[0].scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    assert results[0].items[0][0]["text"] == "a photo of coffee"
    batch = searcher.search(images=[path, photos / "sub" / "chelsea.jpg"], k=1)
    assert batch.ids[:, 0].tolist() == ["coffee.jpg", "sub/chelsea.jpg"]


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"vectors": np.ones((2, 31), np.float32)}, "expected n x 32"),
        ({"vectors": np.zeros((0, 32), np.float32)}, "expected n x 32"),
        ({"vectors": [[float("nan")] * 32]}, "NaN"),
        ({"vectors": np.zeros(32, np.float32)}, "zero vector"),
        ({"vectors": "abc"}, "vectors"),
        ({"texts": [""]}, "texts[0]: empty text"),
        ({"texts": ["ok", "   "]}, "texts[1]: empty text"),
        ({"texts": []}, "no query"),
        ({"texts": [3]}, "expected a string"),
        ({"images": [b"not an image at all"]}, "not a usable image"),
        ({"images": [b""]}, "not a usable image"),
        ({"images": ["/no/such/file.jpg"]}, "no such file"),
        ({"images": [1.5]}, "expected a path, bytes or a PIL image"),
        ({"texts": ["a"], "k": 0}, "k=0"),
        ({"texts": ["a"], "k": -3}, "k=-3"),
        ({"texts": ["a"], "k": 2.5}, "k=2.5"),
        ({}, "exactly one of"),
        ({"texts": ["a"], "vectors": np.ones(32)}, "exactly one of"),
    ],
)
def test_bad_queries_raise_query_error(photo_index, tiny_checkpoint, query, message):
    searcher = Searcher.open(photo_index, model_config(tiny_checkpoint))
    with pytest.raises(QueryError) as err:
        searcher.search(**query)
    assert message in str(err.value)


def test_the_encoder_is_built_only_for_text_or_image_queries(photo_index):
    searcher = Searcher.open(photo_index, model_config())
    assert searcher.search(vectors=np.ones(32), k=1).ids.shape == (1, 1)
    assert searcher._encoder is None
    searcher.search(texts=["a cat"], k=1)
    assert searcher._encoder is not None


def _with_checkpoint_at(photo_index, tmp_path, checkpoint):
    """A copy of the index whose fingerprint says the weights were loaded from ``checkpoint``."""
    copy = tmp_path / "idx"
    shutil.copytree(photo_index, copy)
    info = json.loads((copy / "index.json").read_text())
    info["embedding"]["model"]["checkpoint_path"] = str(checkpoint)
    del info["files"]  # index.json is edited here, as a user moving files would not; its data files are intact
    (copy / "index.json").write_text(json.dumps(info))
    return copy


def test_an_index_built_from_a_checkpoint_finds_it_where_embed_loaded_it(photo_index, tiny_checkpoint, tmp_path):
    """Issue 8: the index recorded only the file name, so text and image queries were refused until the user
    passed the same path again. The absolute path is kept, and used while the file's sha256 still matches."""
    recorded = json.loads((photo_index / "index.json").read_text())["embedding"]["model"]
    assert recorded["checkpoint_path"] == str(tiny_checkpoint.resolve()) and recorded["pretrained"] == "tiny.pt"
    plain = Searcher.open(photo_index, model_config()).search(texts=["a cat"], k=3)
    given = Searcher.open(photo_index, model_config(tiny_checkpoint)).search(texts=["a cat"], k=3)
    assert plain.ids.tolist() == given.ids.tolist()
    np.testing.assert_allclose(plain.scores, given.scores, atol=1e-6)

    moved = tmp_path / "elsewhere" / "tiny.pt"
    moved.parent.mkdir()
    shutil.copy(tiny_checkpoint, moved)
    index = _with_checkpoint_at(photo_index, tmp_path / "a", moved)
    assert Searcher.open(index, model_config()).search(texts=["a cat"], k=3).ids.tolist() == plain.ids.tolist()
    with open(moved, "ab") as f:  # the file changed since: its hash no longer matches
        f.write(b"\0")
    with pytest.raises(LatentError, match=rf"{moved}, has changed since.*model.pretrained=/path/to/tiny.pt"):
        Searcher.open(index, model_config()).search(texts=["a cat"])
    moved.unlink()
    with pytest.raises(LatentError, match=rf"checkpoint file 'tiny.pt'.*{moved}, which is gone.*model.pretrained="):
        Searcher.open(index, model_config()).search(texts=["a cat"])


def test_other_weights_are_refused(photo_index, tiny_model, tmp_path):
    import open_clip
    import torch

    torch.manual_seed(99)
    other = tmp_path / "other.pt"
    torch.save(open_clip.create_model(tiny_model, pretrained=None).state_dict(), other)
    with pytest.raises(LatentError, match="not the ones the index was built with"):
        Searcher.open(photo_index, model_config(other)).search(texts=["a cat"])


def test_a_model_whose_dimension_differs_is_refused(photo_index, tiny_checkpoint, tmp_path):
    copy = tmp_path / "idx"
    shutil.copytree(photo_index, copy)
    info = json.loads((copy / "index.json").read_text())
    info["embedding"]["model"]["dim"] = 64  # as if the index had been built by a wider model of that name
    (copy / "index.json").write_text(json.dumps(info))
    with pytest.raises(LatentError, match="does not match the index's model fingerprint: dim: 32 != 64"):
        Searcher.open(copy, model_config(tiny_checkpoint)).search(texts=["a cat"])


@pytest.mark.slow
def test_random_weights_indexes_rebuild_the_same_model(local_ray, tmp_path, photos, tiny_model):
    from conftest import embed_overrides

    from pipeline.cli import compose
    from pipeline.embed import run_embed

    run_embed(compose("embed", embed_overrides(photos, tmp_path / "emb", tiny_model, "output.dtype=float32")))
    build(tmp_path / "emb", tmp_path / "idx", "input.column=text_embedding")
    searcher = Searcher.open(tmp_path / "idx", model_config())
    result = searcher.search(texts=["a photo of rocket"], k=1)
    assert result.ids[0, 0] == "sub/rocket.png" and result.scores[0, 0] == pytest.approx(1.0, abs=1e-4)
    with pytest.raises(LatentError, match="random weights"):
        Searcher.open(tmp_path / "idx", model_config(tmp_path / "emb" / "_SUCCESS")).search(texts=["x"])


def test_indexes_without_a_model_answer_vector_queries_only(flat_index, tmp_path):
    with pytest.raises(QueryError, match="'synthetic'.*vector queries only"):
        Searcher.open(flat_index).search(texts=["a cat"])
    x = vectors(300)
    write_npy_folder(tmp_path / "npy", x, rows_per_file=100)
    build(tmp_path / "npy", tmp_path / "idx")
    searcher = Searcher.open(tmp_path / "idx")
    assert searcher.fingerprint is None
    assert searcher.search(vectors=x[7], k=1).scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(QueryError, match="no model fingerprint.*vector queries only"):
        searcher.search(images=[Image.new("RGB", (8, 8))])


def test_hits_across_many_item_batches_match_the_index_directory(tmp_path):
    x = vectors(9000, seed=5)  # items.arrow batches hold 4096 rows: hits come from three of them
    build(dataset(tmp_path / "emb", x, rows_per_shard=3000, dtype="float32"), tmp_path / "idx", "index.factory=Flat")
    searcher = Searcher.open(tmp_path / "idx")
    q = noisy_queries(x, 40, seed=6)
    result = searcher.search(vectors=q, k=25)
    _, labels = searcher.directory.index.search(q, 25)
    assert result.ids.tolist() == searcher.directory.ids(labels).tolist()
    rows = searcher.directory.items(labels).to_pylist()
    assert [{k: v for k, v in hit.items() if k != "score"} for hits in result.items for hit in hits] == rows
    assert searcher.search(vectors=q, k=25, with_items=False).ids.tolist() == result.ids.tolist()
