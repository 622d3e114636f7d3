"""``index.storage=ondisk``: IVF inverted lists in a memory-mapped file beside the index file.

A shard (or a one-shard index) is filled in memory by its build task, then its lists are copied into a
FAISS ``OnDiskInvertedLists`` file, ``<shard>.ivfdata``, with ``merge_from_multiple`` (what
``faiss.contrib.ondisk.merge_ondisk`` does): build memory is one shard's; searching maps the file, so
an index larger than RAM is searched from the page cache. The index file records the lists file by its
name at build time; readers find it beside the index file (``IO_FLAG_ONDISK_SAME_DIR``), so the
directory can be moved. Only IVF indexes with plain array lists qualify: fast-scan lists (``x4fs``) are
packed in blocks that the on-disk lists do not hold.
"""

from __future__ import annotations

import os
from pathlib import Path

import faiss

MEMORY = "memory"
ONDISK = "ondisk"
LISTS_SUFFIX = ".ivfdata"


def lists_file(index_file: Path) -> Path:
    return index_file.with_suffix(LISTS_SUFFIX)


def shard_files(index_file: Path) -> list[Path]:
    """The files of one shard: the index file, and its lists file when on disk."""
    lists = lists_file(index_file)
    return [index_file, lists] if lists.exists() else [index_file]


def check_ondisk(index: faiss.Index, factory: str) -> None:
    from pipeline.errors import LatentError

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan):
        raise LatentError(
            f"index.storage=ondisk: {factory} has no plain IVF inverted lists to put on disk (fast-scan "
            f"'x4fs' lists are packed in blocks): use an IVF index such as IVF4096,PQ64 or IVF4096,SQ8"
        )


def write_ondisk(index: faiss.Index, path: Path) -> int:
    """Write filled ``index`` to ``path`` with its inverted lists in ``path.ivfdata``; the files' bytes.
    ``index`` keeps the on-disk lists afterwards."""
    ivf = faiss.extract_index_ivf(index)
    lists_path = lists_file(path)
    on_disk = faiss.OnDiskInvertedLists(ivf.nlist, ivf.code_size, str(lists_path))
    parts = faiss.InvertedListsPtrVector()
    parts.push_back(ivf.invlists)
    on_disk.merge_from_multiple(parts.data(), parts.size(), False, False)
    ivf.replace_invlists(on_disk, True)  # the index owns the on-disk lists (and frees the array lists)
    on_disk.this.disown()
    faiss.write_index(index, str(path))
    return os.path.getsize(path) + os.path.getsize(lists_path)


def read_flags(path: Path, mmap: bool) -> int:
    """faiss.read_index flags for ``path``: on-disk lists found beside it, else mapped flat codes and lists."""
    if lists_file(path).exists():
        return faiss.IO_FLAG_ONDISK_SAME_DIR | faiss.IO_FLAG_READ_ONLY
    return faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY if mmap else 0


def to_memory(index: faiss.Index) -> faiss.Index:
    """``index`` with on-disk lists copied into memory (FAISS can then add to it without writing the file)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None or not isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists):
        return index
    source = ivf.invlists
    in_memory = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
    for i in range(ivf.nlist):
        n = source.list_size(i)
        if n:
            in_memory.add_entries(i, n, source.get_ids(i), source.get_codes(i))
    ivf.replace_invlists(in_memory, True)
    in_memory.this.disown()
    return index
