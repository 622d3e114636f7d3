"""`latent embed`'s output: an embedding dataset directory (docs/embedding-dataset.md) as a job output.

``OutputDir`` is the runner's ``JobOutput`` plus the dataset's recorded model and its dedup rules.
"""

from __future__ import annotations

import logging
import posixpath
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import LatentError
from pipeline.io.shards import ERRORS_DIR, ERRORS_SCHEMA, EmbeddingInfo, commit_table, list_shards, read_ids
from pipeline.runner.output import JobOutput, writable_error

log = logging.getLogger(__name__)


@dataclass
class DatasetCounts:
    rows: int
    errors: int


def _modality_setting(info: EmbeddingInfo) -> str:
    return "modality=auto" if info.optional else f"modality={info.modality}"


class OutputDir(JobOutput):
    """An embedding dataset directory being written by `latent embed`."""

    def __init__(self, path: str) -> None:
        super().__init__(path, data_dirs=("", ERRORS_DIR), key="id")

    def recorded_info(self) -> EmbeddingInfo | None:
        path = posixpath.join(self.state_dir, "embedding.json")
        return EmbeddingInfo.from_json(self.fs.cat_file(path)) if self.fs.exists(path) else None

    def claim(self, info: EmbeddingInfo) -> None:
        """Record ``info`` for a new dataset, or refuse one recorded with another model or dimension."""
        recorded = self.recorded_info()
        if recorded is not None:
            problems = recorded.compatible_with(info)
            if problems:
                how = "Use a new output.path, or delete the old one."
                if recorded.modality != info.modality or recorded.optional != info.optional:
                    how = (
                        f"Rerun with the modality it was written with ({_modality_setting(recorded)}) to resume it, "
                        f"or use a new output.path."
                    )
                raise LatentError(
                    f"output.path {self.path} already holds embeddings of another model or shape "
                    f"({'; '.join(problems)}). {how}"
                )
            return
        if list_shards(self.path):
            raise LatentError(f"output.path {self.path} holds Parquet files that latent did not write; use a new one")
        try:
            self.fs.makedirs(self.state_dir, exist_ok=True)
            self.fs.pipe_file(posixpath.join(self.state_dir, "embedding.json"), info.to_json().encode())
        except OSError as err:
            raise writable_error(self.path, err) from err

    def done_ids(self) -> pa.Array:
        """Ids already written, as shards or as recorded errors."""
        return self.done_keys()

    def remove_duplicates(self) -> int:
        """Keep one row per id. Duplicates come from a task retried after its commit, or from the
        input itself; the first shard (by name) keeps the row, later ones are rewritten without it and
        input duplicates are recorded as errors. Returns the number of rows removed."""
        paths = self.shard_paths()
        counts = Counter(read_ids(paths).to_pylist()) if paths else Counter()
        duplicated = {i for i, n in counts.items() if n > 1}
        if not duplicated:
            return 0
        first_source: dict[str, str | None] = {}
        removed = 0
        for path in paths:
            table = pq.read_table(self.fs.open(path, "rb"))
            keep, input_duplicates = [], []
            for row_id, source in zip(table.column("id").to_pylist(), table.column("source").to_pylist()):
                is_first = row_id not in duplicated or row_id not in first_source
                keep.append(is_first)
                if row_id not in duplicated:
                    continue
                if is_first:
                    first_source[row_id] = source
                elif source != first_source[row_id]:  # same source twice is a retried task, not an input error
                    input_duplicates.append(
                        {"id": row_id, "source": source, "error": f"duplicate id (kept {first_source[row_id]})"}
                    )
            if all(keep):
                continue
            removed += keep.count(False)
            kept = table.filter(pa.array(keep))
            if kept.num_rows:
                commit_table(kept, self.root)
            self.fs.rm(path)
            if input_duplicates:
                commit_table(pa.Table.from_pylist(input_duplicates, schema=ERRORS_SCHEMA), self.errors_dir)
        log.warning("removed %d rows whose id was already in the dataset", removed)
        return removed

    def counts(self) -> DatasetCounts:
        rows = sum(pq.ParquetFile(self.fs.open(p, "rb")).metadata.num_rows for p in self.shard_paths())
        errors = len(read_ids(self.error_paths()).unique()) if self.error_paths() else 0
        return DatasetCounts(rows, errors)
