"""bench/gpu_check.py's dry run (--cpu, tiny sizes) and gpu_prepare's part staging: the GPU check cannot rot."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpu_check_dry_run_measures_every_step(local_ray, tmp_path):
    gpu_check = _load("gpu_check")
    out = tmp_path / "out"
    argv = ["--cpu", "--out", str(out), "--work", str(tmp_path / "work"), "--images", "24", "--index-rows", "3000"]
    result = gpu_check.main(argv)
    failed = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
    assert not failed
    assert json.loads((out / "gpu_check.json").read_text())["mode"] == "cpu dry run"
    ceilings = {k: v for k, v in result["ceilings"].items() if k != "seconds"}
    assert len(ceilings) == 2 and all(v > 0 for v in ceilings.values())
    for decode in ("cpu", "cuda"):
        embed = result[f"embed gpu-check-tiny decode={decode}"]
        assert embed["rows"] == 24 and embed["errors"] == 0
    assert result["latent index"]["ntotal"] == 3000 and result["exact search torch"]["qps"] > 0
    table = (out / "gpu_check.md").read_text()
    assert "forward-only ceiling" in table and "decode=cuda" in table and "latent index" in table


def test_prepare_stages_parts_and_refuses_missing_or_corrupt_ones(tmp_path, monkeypatch):
    prepare = _load("gpu_prepare")
    monkeypatch.setattr(prepare, "WHEELS", tmp_path / "wheels")
    monkeypatch.setattr(prepare, "STAGE", tmp_path / "stage")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("x-1.0-py3-none-any.whl")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    data = buf.getvalue()
    chunks = [data[: len(data) // 2], data[len(data) // 2 :]]
    parts = [
        {"name": f"part-0{i}", "bytes": len(c), "sha256": hashlib.sha256(c).hexdigest()} for i, c in enumerate(chunks)
    ]
    manifest = json.dumps({"faiss": "none", "wheels": {"x-1.0-py3-none-any.whl": 3}, "parts": parts})
    prepare.WHEELS.mkdir()

    def carry(i: int, content: bytes) -> None:  # what one device call brings: one part and the manifest
        for old in prepare.WHEELS.iterdir():
            old.unlink()
        (prepare.WHEELS / f"part-0{i}").write_bytes(content)
        (prepare.WHEELS / f"part-0{i}.json").write_text(manifest)

    carry(0, chunks[0])
    assert prepare.receive() == ["part-00"]
    with pytest.raises(SystemExit, match="parts missing"):
        prepare.install()
    carry(1, chunks[1][:-1] + b"!")
    with pytest.raises(SystemExit, match="corrupt"):
        prepare.install()
    installed = []
    monkeypatch.setattr(prepare, "_pip", lambda *args: installed.append(args))
    carry(1, chunks[1])
    prepare.install()
    assert installed and installed[0][-1].endswith("x-1.0-py3-none-any.whl")
    assert (prepare.STAGE / "wheels" / "x-1.0-py3-none-any.whl").read_bytes() == b"abc"
