"""jobs/sweeps: a Hydra multirun gives each run its own output directory and its own recorded config."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from index.helpers import dataset, vectors

from .conftest import REPO, latest_summary


def test_index_factory_sweep_writes_one_recorded_index_per_factory(tmp_path):
    src = dataset(tmp_path / "ds", vectors(3000, seed=2), rows_per_shard=1000)
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
        "FACTORIES": '"IVF16,Flat",HNSW16',
    }
    run = subprocess.run(
        [
            "bash",
            str(REPO / "jobs/sweeps/index-factories.sh"),
            str(src),
            str(tmp_path / "sweep"),
            "progress=false",
            "index.max_memory=1G",
            "ray.num_cpus=1",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    factories = {}
    for n in (0, 1):
        directory = tmp_path / "sweep" / str(n)
        summary = latest_summary(directory)
        (config,) = directory.glob("runs/*/config.yaml")
        recorded = yaml.safe_load(config.read_text())
        assert recorded["index"]["factory"] == summary["factory"]
        assert recorded["index"]["path"] == str(directory)
        assert list((directory / "runs").glob("*/version.json"))
        factories[summary["factory"]] = summary["ntotal"]
    assert factories == {"IVF16,Flat": 3000, "HNSW16": 3000}
