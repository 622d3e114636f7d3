"""`latent verify index.path=INDEX`: every file of an index directory checked against index.json.

Opening an index checks what is cheap (sizes, small files' checksums, FAISS's header); this checks all
of it: the sha256 of every file, the FAISS index parsed in full (not memory-mapped), items and ids
aligned with it, and on a normalised ip index that stored vectors are unit-length where FAISS can give
them back. The first problem is an ``IndexCorrupted`` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.config import VerifyCommandConfig
from pipeline.errors import LatentError
from pipeline.index.store.format import IDS_FILE, INDEX_FILE, INFO_FILE, ITEMS_FILE, IndexInfo
from pipeline.index.store.integrity import IndexCorrupted, check_files, lossy_scores, open_arrow, read_faiss_index

NORM_CHUNK = 65536  # stored vectors reconstructed at a time for the norm check
NORM_TOLERANCE = 0.05  # float16 copies of unit vectors stay well within this


@dataclass
class VerifyReport:
    path: str
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def text(self) -> str:
        lines = [f"latent verify: {self.path}: ok", *(f"  {c}" for c in self.checks)]
        return "\n".join(lines + [f"  warning  {w}" for w in self.warnings])


def verify_index(path: str | Path) -> VerifyReport:
    """Check the index directory at ``path`` in full; raises IndexCorrupted at the first problem."""
    root = Path(path)
    if not (root / INFO_FILE).is_file():
        raise LatentError(f"index.path={root}: not an index directory (no {INFO_FILE})")
    info = IndexInfo.from_json((root / INFO_FILE).read_bytes())
    report = VerifyReport(str(root))
    report.checks += check_files(root, info.files, info.data_files(), full=True)
    if info.files is None:
        report.warnings.append(
            f"{INFO_FILE} records no checksums (written by an older latent): only the structure was checked; "
            "rebuild with index.mode=overwrite to record them"
        )
    parts = [(INDEX_FILE, info.ntotal, 0)]  # (file, vectors, read flags): one index.faiss, or every shard
    if info.shards:
        from pipeline.index.store.ondisk import read_flags

        parts = [(e["file"], e["ntotal"], read_flags(root / e["file"], False)) for e in info.shards]
    indexes = []
    for name, ntotal, flags in parts:
        indexes.append((name, read_faiss_index(root / name, info.dim, ntotal, flags)))
        report.checks.append(f"{name}: {ntotal} x {info.dim} parsed")
    items, ids = open_arrow(root / ITEMS_FILE), open_arrow(root / IDS_FILE)
    item_rows = sum(items.get_batch(i).num_rows for i in range(items.num_record_batches))
    id_rows = sum(ids.get_batch(i).num_rows for i in range(ids.num_record_batches))
    if item_rows != info.ntotal or id_rows != info.ntotal:
        raise IndexCorrupted(f"{root}: {item_rows} item rows and {id_rows} ids for {info.ntotal} vectors")
    report.checks.append(f"{ITEMS_FILE}, {IDS_FILE}: {item_rows} rows each")
    if info.metric == "ip" and info.normalized and info.ntotal and not lossy_scores(info.factory):
        for name, index in indexes:
            checked = _check_norms(root / name, index, index.ntotal)
            if checked:
                report.checks.append(f"{name}: all {checked} stored vectors unit-length")
    return report


def _check_norms(path: Path, index, ntotal: int) -> int:
    """Every stored vector of a normalised index is unit-length (when FAISS can give them back): 0 if it cannot."""
    import faiss

    try:
        index.reconstruct(0)
    except RuntimeError:
        ivf = faiss.try_extract_index_ivf(index)
        try:
            ivf.make_direct_map()
            index.reconstruct(0)
        except (RuntimeError, AttributeError):
            return 0
    for start in range(0, ntotal, NORM_CHUNK):
        norms = np.linalg.norm(index.reconstruct_n(start, min(NORM_CHUNK, ntotal - start)), axis=1)
        bad = np.flatnonzero(~(np.abs(norms - 1) <= NORM_TOLERANCE))
        if len(bad):
            raise IndexCorrupted(
                f"{path}: stored vector {start + int(bad[0])} has norm {norms[bad[0]]:.6g} in a "
                f"normalised index: the index data is corrupted; rebuild it (index.mode=overwrite)"
            )
    return ntotal


def run_verify(cfg: VerifyCommandConfig) -> VerifyReport:
    """The `latent verify` command."""
    report = verify_index(cfg.index.path)
    print(report.text())
    return report
