"""Wheels for bench/gpu_check.py on a bare GPU machine without network, sent in parts of <= 60 MiB.

Here (networked; any Python):
    python bench/gpu_prepare.py download [--faiss cpu|cu13|none]
        downloads cp312 manylinux x86-64 wheels of what the GPU machine lacks (Ray, open_clip, Hydra,
        FAISS...), packs them into one tar and splits it into .gpu-wheels/part-00, part-01, ... (ignored
        by git), and prints the device calls to make.
There (the GPU machine; each call carries one part):
    python3 bench/gpu_prepare.py receive      # copies the carried part(s) into .gpu-stage/ (kept while warm)
    python3 bench/gpu_prepare.py install      # joins the parts, checks their sha256, pip installs offline
                                              # into .gpu-stage/site; prints the PYTHONPATH to export
The GPU machine (nvidia-h200) already has torch 2.11 + torchvision 0.26 (cu130), numpy, pandas,
pyarrow, timm, huggingface_hub, safetensors, regex, tqdm, psutil, pyyaml, fsspec, requests, click,
msgpack, protobuf, grpcio, filelock, packaging (/work/.library/device/KINDS.md); the list below is
the rest, at the versions this project tests with.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS = REPO / ".gpu-wheels"  # here: downloads and parts (gitignored)
STAGE = REPO / ".gpu-stage"  # there: received parts and the installed site (gitignored)
PART_BYTES = 56 * 1024**2  # one transfer carries at most 64 MiB, the working tree (~1 MiB) included
PLATFORM = ["--python-version", "3.12", "--implementation", "cp", "--only-binary=:all:"] + [
    arg
    for tag in ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
    for arg in ("--platform", tag)
]
PACKAGES = [
    "ray==2.60.0",
    "open_clip_torch==3.3.0",
    "ftfy==6.3.1",
    "wcwidth==0.9.4",
    "hydra-core==1.3.8",
    "omegaconf==2.3.1",
    "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0",
    "rpds-py==2026.9.1",
]
SOURCE_ONLY = ["antlr4-python3-runtime==4.9.3"]  # pure Python, published as an sdist only: built into a wheel here
FAISS = {
    "cpu": ["faiss-cpu==1.15.1"],
    # CUDA 13 FAISS (latent[cu13]); with its CUDA 13.2+ runtime libraries well over 1 GB: 20+ transfers
    "cu13": ["faiss-gpu-cuvs==1.15.1", "libcuvs-cu13==26.6.0", "libraft-cu13==26.6.0", "librmm-cu13==26.6.0"],
    "none": [],
}


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def download(faiss: str) -> dict:
    wheels = WHEELS / "wheels"
    shutil.rmtree(WHEELS, ignore_errors=True)
    wheels.mkdir(parents=True)
    _pip("download", "--no-deps", "-q", *PLATFORM, "-d", str(wheels), *PACKAGES, *FAISS[faiss])
    _pip("wheel", "--no-deps", "-q", "-w", str(wheels), *SOURCE_ONLY)
    bundle = WHEELS / "bundle.tar"
    with tarfile.open(bundle, "w") as tar:
        for wheel in sorted(wheels.glob("*.whl")):
            tar.add(wheel, arcname=wheel.name)
    parts = []
    with open(bundle, "rb") as f:
        while chunk := f.read(PART_BYTES):
            part = WHEELS / f"part-{len(parts):02d}"
            part.write_bytes(chunk)
            parts.append({"name": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    manifest = {
        "faiss": faiss,
        "wheels": {w.name: w.stat().st_size for w in sorted(wheels.glob("*.whl"))},
        "bundle_bytes": bundle.stat().st_size,
        "parts": parts,
    }
    # the manifest travels in every call (a small file beside the part), the wheels themselves do not
    for part in parts:
        (WHEELS / f"{part['name']}.json").write_text(json.dumps(manifest, indent=2))
    shutil.rmtree(wheels)
    bundle.unlink()
    return manifest


def receive() -> list[str]:
    """Copy whatever parts this call carried into the stage that stays on the machine between calls."""
    STAGE.mkdir(exist_ok=True)
    got = []
    for part in sorted(WHEELS.glob("part-[0-9][0-9]")):
        shutil.copyfile(part, STAGE / part.name)
        shutil.copyfile(part.with_name(part.name + ".json"), STAGE / "manifest.json")
        got.append(part.name)
    have = sorted(p.name for p in STAGE.glob("part-[0-9][0-9]"))
    print(f"gpu_prepare: received {got or 'nothing'}; staged {have}")
    return have


def install() -> str:
    receive()
    manifest = json.loads((STAGE / "manifest.json").read_text())
    missing = [p["name"] for p in manifest["parts"] if not (STAGE / p["name"]).exists()]
    if missing:
        sys.exit(f"gpu_prepare: parts missing: {missing} (the machine went back between calls? send them again)")
    bundle = STAGE / "bundle.tar"
    with open(bundle, "wb") as out:
        for part in manifest["parts"]:
            data = (STAGE / part["name"]).read_bytes()
            if hashlib.sha256(data).hexdigest() != part["sha256"]:
                sys.exit(f"gpu_prepare: {part['name']} is corrupt (sha256 differs); send it again")
            out.write(data)
    wheels = STAGE / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    with tarfile.open(bundle) as tar:
        tar.extractall(wheels, filter="data")
    site = STAGE / "site"
    _pip(
        "install", "-q", "--no-index", "--no-deps", "--no-compile", "--no-cache-dir", "--upgrade",
        "--target", str(site), *sorted(str(w) for w in wheels.glob("*.whl")),
    )  # fmt: skip
    print(f"gpu_prepare: installed {len(manifest['wheels'])} wheels; export PYTHONPATH={site}:$PYTHONPATH")
    return str(site)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    get = sub.add_parser("download", help="here: fetch, pack and split the wheels")
    get.add_argument("--faiss", choices=sorted(FAISS), default="cpu")
    sub.add_parser("receive", help="there: stage the carried part")
    sub.add_parser("install", help="there: join, verify and install offline")
    args = parser.parse_args()
    if args.command == "download":
        manifest = download(args.faiss)
        total = manifest["bundle_bytes"]
        print(json.dumps({k: v for k, v in manifest.items() if k != "parts"}, indent=2))
        print(f"\n{len(manifest['parts'])} part(s), {total / 2**20:.1f} MiB in all. Device calls, back to back:")
        for i, part in enumerate(manifest["parts"]):
            carry = [f".gpu-wheels/{part['name']}", f".gpu-wheels/{part['name']}.json"]
            last = i == len(manifest["parts"]) - 1
            command = "bash bench/gpu_check.sh" if last else "python3 bench/gpu_prepare.py receive"
            print(f"  run(carry={json.dumps(carry)}, command={command!r}{', timeout_s=600' if last else ''})")
    elif args.command == "receive":
        receive()
    else:
        install()


if __name__ == "__main__":
    main()
