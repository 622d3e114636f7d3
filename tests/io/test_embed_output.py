from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet  # noqa: F401  (pa.parquet)
import pytest

from pipeline.errors import LatentError
from pipeline.io.embed_output import OutputDir
from pipeline.io.shards import EmbeddingInfo, commit_table, vectors_to_arrow

MODEL = {"name": "m", "pretrained": None, "checkpoint_sha256": None, "dim": 4, "preprocess": {}}


def shard(ids, sources, info) -> pa.Table:
    import numpy as np

    n = len(ids)
    return pa.table(
        {
            "id": ids,
            "source": sources,
            "text": pa.nulls(n, pa.string()),
            "image_embedding": vectors_to_arrow(np.ones((n, 4), np.float32) / 2, "float16"),
        }
    ).cast(info.shard_schema())


def test_duplicates_from_retries_vanish_and_input_duplicates_become_errors(tmp_path):
    info = EmbeddingInfo.create(MODEL, "float16", "image")
    out = OutputDir(str(tmp_path))
    out.claim(info)
    commit_table(shard(["a", "b"], ["fa", "fb"], info), str(tmp_path))
    commit_table(shard(["b", "c"], ["fb", "fc"], info), str(tmp_path))  # b again: a retried task
    commit_table(shard(["c", "d"], ["other", "fd"], info), str(tmp_path))  # c again from elsewhere
    assert out.remove_duplicates() == 2
    ids = pads.dataset(str(tmp_path), format="parquet").to_table().column("id").to_pylist()
    assert sorted(ids) == ["a", "b", "c", "d"]
    errors = pads.dataset(str(tmp_path / "_errors"), format="parquet").to_table().to_pylist()
    assert len(errors) == 1 and errors[0]["id"] == "c" and errors[0]["error"].startswith("duplicate id")
    assert out.counts().rows == 4 and out.counts().errors == 1
    assert sorted(out.done_ids().to_pylist()) == ["a", "b", "c", "d"]


def test_claim_refuses_another_model_and_foreign_files(tmp_path):
    out = OutputDir(str(tmp_path / "o"))
    out.claim(EmbeddingInfo.create(MODEL, "float16", "image"))
    out.claim(EmbeddingInfo.create(MODEL, "float16", "image"))  # same: fine
    with pytest.raises(LatentError, match="dim"):
        out.claim(EmbeddingInfo.create({**MODEL, "dim": 8}, "float16", "image"))
    foreign = tmp_path / "f"
    foreign.mkdir()
    pa.parquet.write_table(pa.table({"x": [1]}), foreign / "data.parquet")
    with pytest.raises(LatentError, match="did not write"):
        OutputDir(str(foreign)).claim(EmbeddingInfo.create(MODEL, "float16", "image"))
