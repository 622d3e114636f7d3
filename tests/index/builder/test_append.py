"""Issue 8: `index.mode=append` silently dropped different vectors whose ids collided ("skipped 2000").
Same id + same vector is a re-read row (skipped, said so); a different vector is index.on_duplicate_id's."""

from __future__ import annotations

import numpy as np
import pytest

from index.helpers import build, dataset, vectors
from pipeline.errors import LatentError
from pipeline.index.store.directory import IndexDirectory
from pipeline.search import Searcher


def snapshot(path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture
def collided(tmp_path):
    """An index of v0..v999, and an input v500..v1499 whose v500..v999 are OTHER vectors (another seed)."""
    old, other = vectors(1000, seed=11), vectors(1000, seed=12)
    build(dataset(tmp_path / "a", old, dtype="float32"), tmp_path / "idx", "index.factory=Flat")
    new = dataset(tmp_path / "b", other, first_row=500, dtype="float32")
    return tmp_path / "idx", new, old, other


def test_a_different_vector_under_an_indexed_id_is_an_error_by_default(collided):
    idx, new, _, _ = collided
    before = snapshot(idx)
    with pytest.raises(LatentError, match=r"duplicate id 'v500' \(.*row 0\).*on_duplicate_id=skip.*replace"):
        build(new, idx, "index.mode=append")
    assert snapshot(idx) == before


def test_skip_keeps_the_indexed_vectors_and_says_so(collided):
    idx, new, old, _ = collided
    summary = build(new, idx, "index.mode=append", "index.on_duplicate_id=skip")
    assert (summary.added, summary.skipped, summary.ntotal) == (500, 500, 1500)
    assert any("500 rows whose id the index holds with a different vector" in w for w in summary.warnings)
    searcher = Searcher.open(idx)
    np.testing.assert_allclose(searcher.vector("v700"), old[700], atol=1e-6)


@pytest.mark.parametrize("factory", ["Flat", "IVF16,PQ8x4fs,Refine(SQfp16)", "HNSW16,Flat"])
def test_replace_takes_the_input_vectors_under_the_same_labels(tmp_path, factory):
    old, other = vectors(1000, seed=11), vectors(1000, seed=12)
    build(dataset(tmp_path / "a", old, dtype="float32"), tmp_path / "idx", f"index.factory='{factory}'")
    label_before = IndexDirectory.open(tmp_path / "idx").label_of("v700")
    new = dataset(tmp_path / "b", other, first_row=500, dtype="float32")
    summary = build(new, tmp_path / "idx", "index.mode=append", "index.on_duplicate_id=replace")
    assert (summary.added, summary.replaced, summary.ntotal) == (500, 500, 1500)
    searcher = Searcher.open(tmp_path / "idx")
    assert searcher.directory.label_of("v700") == label_before
    np.testing.assert_allclose(searcher.vector("v700"), other[200], atol=2e-3)  # float16 re-rank copies
    np.testing.assert_allclose(searcher.vector("v100"), old[100], atol=2e-3)  # untouched rows stay
    hits = searcher.search(vectors=other[200], k=1)
    assert hits.ids[0, 0] == "v700" and hits.scores[0, 0] > 0.99
    assert searcher.search(vectors=other[900], k=1).ids[0, 0] == "v1400"  # a new row


def test_the_same_vectors_reread_are_skipped_silently(tmp_path):
    x = vectors(1500, seed=13)
    src = dataset(tmp_path / "ds", x[:1000])
    build(src, tmp_path / "idx")
    dataset(src, x[1000:], first_row=1000)  # the dataset grows, as a resumed embed job makes it
    summary = build(src, tmp_path / "idx", "index.mode=append")  # on_duplicate_id=error: no error here
    assert (summary.added, summary.skipped) == (500, 1000) and not summary.warnings
    assert "1000 rows already indexed (same id, same vector)" in summary.reason
