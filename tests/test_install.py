"""Install contract: torch as a range (a cluster's CUDA torch is kept), CI's pins in constraints/ci.txt,
one FAISS build per extra, and a clear message when no FAISS is installed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pipeline.errors import LatentError

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
ROOT = Path(__file__).resolve().parent.parent


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_torch_is_a_range_and_ci_pins_the_tested_versions():
    deps = {d.split(">")[0].split("=")[0].split("<")[0].strip(): d for d in _project()["dependencies"]}
    assert "==" not in deps["torch"] and "==" not in deps["torchvision"]
    pins = (ROOT / "constraints" / "ci.txt").read_text().split()
    assert "torch==2.14.1" in pins and "torchvision==0.29.1" in pins
    assert "-c constraints/ci.txt" in (ROOT / "Makefile").read_text()


def test_each_faiss_extra_names_one_build():
    extras = _project()["optional-dependencies"]
    assert not [d for d in _project()["dependencies"] if d.startswith("faiss")]  # pip chooses through an extra
    assert extras["cu12"][0].startswith("faiss-gpu==1.15.1")
    assert extras["cu13"][0].startswith("faiss-gpu-cuvs==1.15.1") and extras["cu13"][1].startswith("libcuvs-cu13>=26.6")
    assert extras["cpu"] == ["faiss-cpu==1.15.1"]


def test_a_command_without_faiss_says_which_extra_to_install(monkeypatch):
    from pipeline.cli import _load

    for name in [
        m for m in sys.modules if m == "faiss" or m.startswith(("faiss.", "pipeline.index", "pipeline.search"))
    ]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now fails as if it were not installed
    with pytest.raises(LatentError, match=r"latent\[cu12\].*latent\[cu13\].*latent\[cpu\]"):
        _load("pipeline.index.builder.build:run_index")
