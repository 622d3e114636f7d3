"""The cluster tests' fixtures: one real two-node Ray cluster for the session, and corpora for it.

``ray_cluster`` is what a new cluster test (e.g. the knn job's) takes: a running head and worker on
loopback (``.address`` for ``ray.address=``, ``.dashboard_url`` for the Jobs API, ``.nodes`` with
node ids). A test that kills the worker restarts it before it returns, so the next test sees two nodes.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import command_override, compose

from .localcluster import LocalCluster

REPO = Path(__file__).resolve().parents[2]
JOB_TIMEOUT = 240  # no job of these tests may take longer (generous: CI machines may be loaded)


@pytest.fixture(scope="session")
def ray_cluster():
    """A head (2 CPUs, resource latent_head) and a worker (2 CPUs, resource latent_worker) on loopback."""
    cluster = LocalCluster.start(head_cpus=2, worker_cpus=2)
    try:
        yield cluster
    finally:
        cluster.stop()


def make_corpus(root: Path, n: int, size: int = 160, seed: int = 0) -> list[str]:
    """``n`` JPEGs cut from scikit-image's photos (seeded random crops); returns their ids (relative paths)."""
    import numpy as np
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(seed)
    photos = [getattr(data, name)() for name in ("astronaut", "chelsea", "coffee", "rocket")]
    root.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        photo = photos[i % len(photos)]
        y, x = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        name = f"img{i:05d}.jpg"
        Image.fromarray(photo[y : y + size, x : x + size]).convert("RGB").save(root / name, quality=90)
        names.append(name)
    return names


@pytest.fixture(scope="session")
def cluster_corpus(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("cluster-corpus") / "images"
    return root, make_corpus(root, 96)


def job_config(cluster: LocalCluster, *command: str, name: str = "latent-test"):
    """The submit-job config for ``command`` on ``cluster``: this checkout uploaded as the working dir."""
    overrides = [
        f"address={cluster.dashboard_url}",
        f"name={name}",
        f"timeout_s={JOB_TIMEOUT}",
        f"runtime_env.working_dir={REPO}",
        "+runtime_env.env_vars.RAY_AUTH_MODE=disabled",
    ]
    return compose("job", command_override([*overrides, "--", *command]))


def tiny_embed_command(corpus: Path, output: Path, model: str, *extra: str) -> list[str]:
    """The embed job as the tests submit it: tests/tiny_cli.py registers the tiny model in the driver."""
    return [
        sys.executable,
        "tests/tiny_cli.py",
        "embed",
        f"input.path={corpus}",
        f"output.path={output}",
        f"model.name={model}",
        "model.pretrained=null",
        "progress=false",
        "ray.address=auto",
        *extra,
    ]


def read_ids(output: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [i for f in sorted(output.glob("*.parquet")) for i in pq.read_table(f, columns=["id"])["id"].to_pylist()]


def wait_for(predicate, timeout: float, what: str, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def latest_summary(directory: Path) -> dict:
    runs = sorted((directory / "runs").glob("*/summary.json"))
    assert runs, f"no run record under {directory}/runs"
    return json.loads(runs[-1].read_text())


def job_end(client, submission: str) -> str:
    """Waits for the submitted job to end; returns its final status."""

    def ended() -> str | None:
        status = str(client.get_job_status(submission).value)
        return status if status in ("SUCCEEDED", "FAILED", "STOPPED") else None

    return wait_for(ended, JOB_TIMEOUT, f"the job {submission} to end", every=1.0)
