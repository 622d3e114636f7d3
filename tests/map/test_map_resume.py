"""A real `kill -9` of `latent map` during placement, then a rerun: the layout is reused, the placed rows
are kept, and every row is placed exactly once (placement runs on the shared job runner)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from processes import kill_group, start_group
from synthetic import write_embedding_dataset

from map.conftest import clustered
from pipeline.map.store import MapDirectory

ROWS = 8000


def start_map(emb: Path, out: Path) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        "pipeline.cli",
        "map",
        f"input.path={emb}",
        f"output.path={out}",
        "map.method=pca",  # a layout in no time: the test is about placement (its staged layout is still reused)
        "map.landmarks=800",
        "map.labels=none",
        "quality.sample=0",
        "image=false",
        "ray.num_cpus=2",
        "resources.actors=1",
        "batch_size=20",
        "output.rows_per_shard=40",
        "progress=false",
    ]
    return start_group(args)


def staged(out: Path) -> list[Path]:
    return list(out.parent.glob(f".{out.name}.tmp-map-*"))


def shards(points: Path) -> set[str]:
    return {p.name for p in points.glob("part-*.parquet")}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # two runs of a Ray job; a loaded CI machine is slow
def test_kill_minus_nine_during_placement_then_rerun_places_every_row_once(tmp_path):
    vectors, _ = clustered(ROWS)
    emb = tmp_path / "emb"
    write_embedding_dataset(emb, vectors, dtype="float32", rows_per_shard=400)  # 20 units
    out = tmp_path / "map"

    first = start_map(emb, out)
    try:
        deadline = time.time() + 600
        while time.time() < deadline:
            assert first.poll() is None, first.stdout.read()
            found = staged(out)
            if found and len(shards(found[0] / "points")) >= 5:
                break
            time.sleep(0.1)
    finally:
        kill_group(first)
    assert not (out / "map.json").exists()  # killed midway: nothing published
    (staging,) = staged(out)
    before = shards(staging / "points")
    assert before and not (staging / "_SUCCESS").exists()
    layout = json.loads((staging / "labels.json").read_text())["timings"]

    second = start_map(emb, out)
    try:
        output, _ = second.communicate(timeout=900)
    finally:
        kill_group(second)
    assert second.returncode == 0, output
    assert "took over the output lock" in output  # the killed run's lock, left behind, is taken over
    kept = re.search(r"resuming: [\d,]+ units and ([\d,]+) rows finished earlier", output)
    assert kept and int(kept.group(1).replace(",", "")) >= 5 * 40, output  # rows placed before the kill: kept

    found = MapDirectory(out)
    points = found.points(["row", "id", "x", "y"])
    assert points.column("row").to_pylist() == list(range(ROWS))  # every row, none twice, in row order
    assert sorted(points.column("id").to_pylist()) == sorted(f"v{i}" for i in range(ROWS))
    assert np.isfinite(points.column("x").to_numpy()).all()
    assert before <= shards(out / "points")  # what was placed before the kill was kept, not redone
    assert found.info.timings["layout_s"] == round(layout["layout_s"], 3)  # the staged layout was reused
    assert found.clusters().to_pandas().query("level == 0")["size"].sum() == ROWS
    assert not staged(out)
