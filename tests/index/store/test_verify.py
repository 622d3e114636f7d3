"""Issue 8: a corrupted index answered garbage silently (cosine 9445, wrong neighbours) or with a C++
traceback. Checksums in index.json, cheap checks on open, all of them in `latent verify`, and no cosine
outside [-1, 1] from a normalised index. Real FAISS files, really damaged."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from index.helpers import build, dataset, run_cli, vectors
from pipeline.index.store import integrity
from pipeline.index.store.directory import IndexDirectory
from pipeline.index.store.format import INDEX_FILE, INFO_FILE, ITEMS_FILE
from pipeline.index.store.integrity import IndexCorrupted
from pipeline.index.store.verify import verify_index
from pipeline.search import Searcher

N, DIM = 2000, 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    x = vectors(N, dim=DIM)
    build(dataset(root / "ds", x, dtype="float32"), root / "idx", "index.factory=Flat")
    return root / "idx", x


@pytest.fixture
def index_copy(built, tmp_path):
    path, x = built
    shutil.copytree(path, tmp_path / "idx")
    return tmp_path / "idx", x


def overwrite(path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def plant_huge_value(path, x: np.ndarray, row: int) -> None:
    """Flip the bytes of one float of row ``row`` of a Flat index's data (its last ntotal x dim floats)."""
    size = path.stat().st_size
    j = int(np.argmax(np.abs(x[row])))
    overwrite(path, size - (N - row) * DIM * 4 + 4 * j, np.float32(9445.0 * np.sign(x[row, j])).tobytes())


def test_checksums_are_recorded_and_verify_passes(built, tmp_path):
    path, _ = built
    files = json.loads((path / INFO_FILE).read_text())["files"]
    assert set(files) == {"index.faiss", "items.arrow", "ids.arrow"}
    assert all(len(f["sha256"]) == 64 and f["bytes"] == (path / name).stat().st_size for name, f in files.items())
    report = verify_index(path)
    assert any("index.faiss" in c and "sha256 ok" in c for c in report.checks) and not report.warnings
    done = run_cli("verify", f"index.path={path}", cwd=tmp_path)
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr


def test_flipped_data_is_refused_on_open_when_small_and_by_verify(index_copy, tmp_path):
    path, x = index_copy
    plant_huge_value(path / INDEX_FILE, x, 17)
    with pytest.raises(IndexCorrupted, match="index.faiss: sha256 differs"):
        IndexDirectory.open(path)  # a small file is hashed in full on open
    done = run_cli("verify", f"index.path={path}", cwd=tmp_path)
    assert done.returncode == 2 and "index.faiss: sha256 differs" in done.stderr and "Traceback" not in done.stderr


def test_flipped_data_of_a_large_index_never_returns_a_cosine_outside_minus_one_one(index_copy, monkeypatch):
    path, x = index_copy
    monkeypatch.setattr(integrity, "SMALL_FILE_BYTES", 0)  # as for a big index: open checks sizes only
    plant_huge_value(path / INDEX_FILE, x, 17)
    searcher = Searcher.open(path)  # cheap checks pass: same size
    with pytest.raises(IndexCorrupted, match=r"cosine \d{3,}.*label 17.*latent verify"):
        searcher.search(vectors=x[17], k=5)
    result = searcher.search(vectors=-x[17], k=5)  # hits that do not touch the damaged row are answered
    assert np.all(np.abs(result.scores) <= 1.0) and "v17" not in result.ids
    with pytest.raises(IndexCorrupted, match="sha256 differs"):
        verify_index(path)


def test_a_flipped_header_is_a_clear_error_not_a_traceback(index_copy, tmp_path):
    path, x = index_copy
    info = json.loads((path / INFO_FILE).read_text())
    del info["files"]  # an index written before checksums: only FAISS's own parse can tell
    (path / INFO_FILE).write_text(json.dumps(info))
    overwrite(path / INDEX_FILE, 0, b"XxZz")
    with pytest.raises(IndexCorrupted, match="index.faiss: FAISS cannot read it"):
        IndexDirectory.open(path)
    vector = "[" + ",".join(str(v) for v in x[0]) + "]"
    done = run_cli("search", f"index.path={path}", f"query.vector={vector}", cwd=tmp_path)
    assert done.returncode == 2 and "FAISS cannot read it" in done.stderr and "Traceback" not in done.stderr


def test_old_directories_without_checksums_still_open(index_copy):
    path, x = index_copy
    info = json.loads((path / INFO_FILE).read_text())
    del info["files"]
    (path / INFO_FILE).write_text(json.dumps(info))
    assert Searcher.open(path).search(vectors=x[3], k=1).ids[0, 0] == "v3"
    assert "no checksums" in verify_index(path).warnings[0]
    plant_huge_value(path / INDEX_FILE, x, 17)  # without checksums, verify still finds the bad vector
    with pytest.raises(IndexCorrupted, match="stored vector 17 has norm"):
        verify_index(path)


def test_truncated_or_missing_files_are_named(index_copy):
    path, _ = index_copy
    with open(path / ITEMS_FILE, "r+b") as f:
        f.truncate(100)
    with pytest.raises(IndexCorrupted, match="items.arrow: 100 bytes, index.json records"):
        IndexDirectory.open(path)
    (path / ITEMS_FILE).unlink()
    with pytest.raises(IndexCorrupted, match="items.arrow: missing"):
        IndexDirectory.open(path)
    (path / INFO_FILE).write_text("{not json")
    with pytest.raises(IndexCorrupted, match="index.json is not valid JSON"):
        IndexDirectory.open(path)


@pytest.mark.parametrize("storage", ["memory", "ondisk"])
def test_a_flipped_byte_in_a_shard_file_is_caught_by_verify(tmp_path, storage):
    """Shard files and on-disk lists files get checksums in index.json like the others; verify hashes them."""
    x = vectors(N, dim=DIM)
    path = tmp_path / "idx"
    build(
        dataset(tmp_path / "ds", x, dtype="float32"), path, "index.factory='IVF8,Flat'", "index.shards=2",
        f"index.storage={storage}", "parallel.min_vectors=null", "index.target_recall=0.5",
    )  # fmt: skip
    info = json.loads((path / INFO_FILE).read_text())
    shard_files = [s["file"] for s in info["shards"]]
    lists = [f.replace(".faiss", ".ivfdata") for f in shard_files] if storage == "ondisk" else []
    assert set(info["files"]) == {*shard_files, *lists, "items.arrow", "ids.arrow"}
    assert any(shard_files[1] in c and "sha256 ok" in c for c in verify_index(path).checks)
    target = path / (lists or shard_files)[-1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the stored vectors
    target.write_bytes(bytes(data))
    with pytest.raises(IndexCorrupted, match=f"{target.name}: sha256 differs"):
        verify_index(path)
    done = run_cli("verify", f"index.path={path}", cwd=tmp_path)
    assert done.returncode == 2 and f"{target.name}: sha256 differs" in done.stderr, done.stderr
