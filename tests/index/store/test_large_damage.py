"""Issue 18: damage inside an index file too large to hash on every open (> 16 MiB; here the threshold is
set to 0) is caught where a user meets it: ``verify="full"`` at open, a damaged stored vector used as a query,
a search's implausible score (naming the shard file that holds it), and serve's background check (503)."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from index.helpers import build, dataset, vectors
from pipeline.index.store import integrity
from pipeline.index.store.format import INDEX_FILE, INFO_FILE
from pipeline.index.store.integrity import IndexCorrupted
from pipeline.search import Searcher

N, DIM = 2000, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("damage")
    x = vectors(N, dim=DIM)
    data = dataset(root / "ds", x, dtype="float32")
    build(data, root / "flat", "index.factory=Flat")
    build(data, root / "sharded", "index.factory=Flat", "index.shards=2", "parallel.min_vectors=null")
    return root, x


def damage_row(path, rows: int, row: int, value: np.ndarray) -> None:
    """Overwrite stored vector ``row`` of a Flat FAISS file holding ``rows`` vectors (its last rows x DIM floats)."""
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - (rows - row) * DIM * 4)
        f.write(np.asarray(value, np.float32).tobytes())


@pytest.fixture
def large(monkeypatch):
    monkeypatch.setattr(integrity, "SMALL_FILE_BYTES", 0)  # as for a big index: open checks sizes only


def test_a_zeroed_vector_is_named_as_damage_not_blamed_on_the_query(built, tmp_path, large):
    root, x = built
    path = shutil.copytree(root / "flat", tmp_path / "flat")
    damage_row(path / INDEX_FILE, N, 17, np.zeros(DIM))
    searcher = Searcher.open(path)  # the quick open: same sizes
    with pytest.raises(IndexCorrupted, match=r"index.faiss: the stored vector of label 17 has norm 0"):
        searcher.vector(str(searcher.directory.ids([17])[0]))
    with pytest.raises(IndexCorrupted, match="index.faiss: sha256 differs"):
        Searcher.open(path, verify="full")


def test_a_damaged_shard_is_named_by_its_file(built, tmp_path, large):
    root, x = built
    path = shutil.copytree(root / "sharded", tmp_path / "sharded")
    shards = json.loads((path / INFO_FILE).read_text())["shards"]
    last = shards[-1]
    label = last["first"] + 5
    searcher = Searcher.open(path)
    stored = searcher.vector(str(searcher.directory.ids([label])[0]))
    damage_row(path / last["file"], last["ntotal"], 5, stored * 9445)
    with pytest.raises(IndexCorrupted, match=rf"{last['file']}: a search returned cosine \d{{3,}}") as caught:
        searcher.search(vectors=stored, k=5)
    assert INDEX_FILE not in str(caught.value)


def test_the_background_check_finds_a_damaged_large_file(built, tmp_path, large):
    from pipeline.serve.file_check import FileCheck

    root, _ = built
    path = shutil.copytree(root / "flat", tmp_path / "flat")
    files = json.loads((path / INFO_FILE).read_text())["files"]
    check = FileCheck(path, files)
    check.start()
    deadline = time.monotonic() + 60
    while check.report()["state"] == "checking" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert check.report() == {"state": "ok", "checked": len(files), "files": len(files), "error": None}
    damage_row(path / INDEX_FILE, N, 3, np.zeros(DIM))
    check = FileCheck(path, files)
    check.start()
    while check.report()["state"] == "checking" and time.monotonic() < deadline:
        time.sleep(0.05)
    report = check.report()
    assert report["state"] == "damaged" and "index.faiss: sha256 differs" in report["error"]
    with pytest.raises(IndexCorrupted, match="index.faiss"):
        check.raise_if_damaged()
