"""Every `latent index` run records its config, code version and summary in the index directory."""

from __future__ import annotations

import json

import yaml

from index.helpers import build, dataset, vectors


def test_each_run_is_recorded_and_records_survive_overwrite_and_append(tmp_path):
    x = vectors(1200, seed=4)
    first = dataset(tmp_path / "a", x[:1000], rows_per_shard=500)
    more = dataset(tmp_path / "b", x[1000:], rows_per_shard=500, first_row=1000)
    idx = tmp_path / "idx"
    build(first, idx, "index.factory=Flat")
    build(first, idx, "index.factory=Flat", "index.mode=overwrite")
    build(more, idx, "index.mode=append")

    runs = sorted((idx / "runs").iterdir())
    assert len(runs) == 3
    modes = []
    for run in runs:
        assert {p.name for p in run.iterdir()} == {"config.yaml", "version.json", "summary.json"}
        config = yaml.safe_load((run / "config.yaml").read_text())
        summary = json.loads((run / "summary.json").read_text())
        assert config["index"]["path"] == str(idx) and config["index"]["mode"] == summary["mode"]
        assert json.loads((run / "version.json").read_text())["latent"]
        modes.append((summary["mode"], summary["ntotal"]))
    assert modes == [("create", 1000), ("overwrite", 1000), ("append", 1200)]
