"""Integrity of an index directory's files: checksums recorded at write, checked on open and by `verify`.

Checksums are per file (``{name: {"bytes", "sha256"}}`` in index.json), so any layout, sharded ones
included, records and checks each of its files the same way. Opening checks what is cheap (sizes,
small files in full, FAISS's parse); `latent verify` checks everything (pipeline/index/store/verify.py).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import faiss
import pyarrow as pa

from pipeline.errors import LatentError

SMALL_FILE_BYTES = 16 << 20  # files up to this size are hashed in full on every open; larger: size only
SCORE_TOLERANCE = 1e-2  # cosine rounding (float16 vectors, |norm - 1| <= 1e-2) clipped to [-1, 1]
LOSSY_SCORE_TOLERANCE = 0.5  # codes-only indexes (PQ/SQ without an exact re-rank) approximate the cosine


class IndexCorrupted(LatentError):
    """A file of an index directory does not match index.json (size, checksum) or cannot be parsed."""


def lossy_scores(factory: str) -> bool:
    """Whether the final scores of ``factory`` come from compressed codes (PQ, SQ8…) rather than exact
    (or float16) vectors; such cosines may stray past +-1 by the quantisation error."""
    exact_rerank = "RFlat" in factory or "Refine(Flat)" in factory or "Refine(SQfp16)" in factory
    return not exact_rerank and any(code in factory for code in ("PQ", "SQ4", "SQ6", "SQ8", "LSH", "RaBitQ"))


def open_arrow(path: Path) -> pa.ipc.RecordBatchFileReader:
    """An Arrow IPC file of an index directory, memory-mapped; IndexCorrupted when it cannot be read."""
    try:
        return pa.ipc.open_file(pa.memory_map(str(path)))
    except (pa.ArrowInvalid, OSError) as err:
        raise IndexCorrupted(f"{path}: not a readable Arrow file ({err}); the index directory is damaged") from err


def read_faiss_index(path: Path, dim: int, ntotal: int, flags: int = 0) -> faiss.Index:
    """A FAISS index file, parsed by FAISS; one FAISS cannot parse, or that does not hold ``ntotal``
    ``dim``-d vectors as index.json says, is an IndexCorrupted naming the file (never a C++ traceback)."""
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        raise IndexCorrupted(
            f"{path}: FAISS cannot read it ({reason[:200]}); the file is damaged: rebuild the index"
        ) from err
    if index.d != dim or index.ntotal != ntotal:
        raise IndexCorrupted(f"{path}: holds {index.ntotal} {index.d}-d vectors, index.json says {ntotal} {dim}-d")
    return index


def sha256_of(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_checksums(root: str | os.PathLike, names: Iterable[str]) -> dict[str, dict[str, Any]]:
    """``{name: {"bytes": size, "sha256": hex}}`` of files of an index directory (per file, so that any
    layout, sharded ones included, records each of its files the same way)."""
    root = Path(root)
    return {name: {"bytes": (root / name).stat().st_size, "sha256": sha256_of(root / name)} for name in names}


def check_files(
    root: str | os.PathLike, files: dict[str, dict[str, Any]] | None, names: Iterable[str], full: bool
) -> list[str]:
    """Check a directory's files against what index.json records (``files``: name -> bytes, sha256; None for
    directories written before checksums, whose ``names`` must merely exist): sizes always, checksums of
    small files (of every file with ``full``). Raises IndexCorrupted naming the first bad file; returns what
    was checked, one line per file."""
    root = Path(root)
    done = []
    for name in names if files is None else files:
        if not (root / name).is_file():
            raise IndexCorrupted(f"{root / name}: missing; the index directory is incomplete")
    for name, want in (files or {}).items():
        path = root / name
        size = path.stat().st_size
        if size != want["bytes"]:
            raise IndexCorrupted(
                f"{path}: {size} bytes, index.json records {want['bytes']}: the file was truncated or replaced"
            )
        if full or size <= SMALL_FILE_BYTES:
            if sha256_of(path) != want["sha256"]:
                raise IndexCorrupted(
                    f"{path}: sha256 differs from the one recorded in index.json: the file is corrupted; "
                    f"rebuild the index (index.mode=overwrite)"
                )
            done.append(f"{name}: {size} bytes, sha256 ok")
        else:
            done.append(f"{name}: {size} bytes ok (sha256 checked by `latent verify`)")
    return done
