"""Shared fixtures: a tiny registered open_clip model, real photos, seeded data. Nothing downloads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

TINY_MODEL = "latent-tiny-vit"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def register_tiny_model(directory: Path) -> str:
    """Register TINY_MODEL with open_clip (idempotent) and return its name."""
    import open_clip

    if TINY_MODEL not in open_clip.list_models():
        path = directory / f"{TINY_MODEL}.json"
        path.write_text(json.dumps(TINY_CONFIG))
        open_clip.add_model_config(path)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    return register_tiny_model(tmp_path_factory.mktemp("model-config"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory) -> Path:
    """Random (seeded) weights of the tiny model saved as a local state_dict checkpoint."""
    import open_clip
    import torch

    torch.manual_seed(1234)
    model = open_clip.create_model(tiny_model, pretrained=None)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


SAMPLE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


@pytest.fixture(scope="session")
def photos(tmp_path_factory) -> Path:
    """A folder of real photos from scikit-image, as JPEG and PNG, with caption sidecars."""
    from PIL import Image
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(SAMPLE_PHOTOS):
        image = Image.fromarray(getattr(data, name)())
        sub = root / ("sub" if i % 2 else "")
        sub.mkdir(exist_ok=True)
        ext = "png" if i == 3 else "jpg"
        image.convert("RGB").save(sub / f"{name}.{ext}")
        (sub / f"{name}.txt").write_text(f"a photo of {name}")
        (sub / f"{name}.json").write_text(json.dumps({"sample": name, "index": i}))
    return root


@pytest.fixture(autouse=True)
def _root_log_handlers():
    """Hydra's in-process CLI runs attach handlers to pytest's captured streams, closed after the test:
    put the root logger back so later tests do not log into a closed file."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


def pytest_collection_modifyitems(config, items):
    """Tiers by marker: everything under tests/cluster/ is `cluster` (multi-node clusters, many processes);
    a test on the session's local Ray (a raylet, a GCS and worker processes) is `ray`."""
    import torch

    cluster_dir = Path(__file__).parent / "cluster"
    for item in items:
        if cluster_dir in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.cluster)
        if "local_ray" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):  # not `"gpu" in item.keywords`: that matches a folder named gpu
            item.add_marker(skip)


os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# The test process is an application like the CLI: it chooses its OpenMP policy (the library doesn't).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def local_ray():
    """One small local Ray for the whole session, on loopback."""
    import ray

    from pipeline.config import RayConfig
    from pipeline.runtime import init_ray

    init_ray(RayConfig(num_cpus=2))
    yield ray
    ray.shutdown()


def embed_overrides(input_path, output_path, model: str, *extra: str) -> list[str]:
    return [
        f"input.path={input_path}",
        f"output.path={output_path}",
        f"model.name={model}",
        "model.pretrained=null",
        "ray.num_cpus=2",
        "ray.inline_max_rows=0",  # the Ray path: what these tests are about (small jobs default to inline)
        "progress=false",
        *extra,
    ]


@pytest.fixture(scope="session")
def local_gpu_ray(local_ray):
    """The session's local Ray; GPU tests need it to see the machine's GPU."""
    if not local_ray.cluster_resources().get("GPU"):
        pytest.skip("the local Ray sees no GPU")
    return local_ray
