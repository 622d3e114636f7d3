"""Small real corpora for tests, written in every input format the embed job reads."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
from PIL import Image


def jpeg_bytes(seed: int, size: tuple[int, int] = (96, 72)) -> bytes:
    """A seeded photo-like JPEG (smooth gradients plus noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    x, y = np.meshgrid(np.linspace(0, 1, w), np.linspace(0, 1, h))
    base = np.stack([x, y, (x + y) / 2], axis=-1) * rng.uniform(80, 255, 3)
    pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def write_image_folder(root: Path, n: int, captions: bool = True) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        sub = root / f"group{i % 3}"
        sub.mkdir(exist_ok=True)
        (sub / f"img{i:05d}.jpg").write_bytes(jpeg_bytes(i))
        if captions:
            (sub / f"img{i:05d}.txt").write_text(f"synthetic picture number {i}")
    return root


def write_tar(path: Path, samples: list[dict[str, bytes]]) -> Path:
    """A WebDataset shard: each sample's files are key.ext, contiguous, as img2dataset writes them."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            key = sample["__key__"]
            for ext, data in sample.items():
                if ext == "__key__":
                    continue
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def write_webdataset(root: Path, shards: int, per_shard: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for s in range(shards):
        samples = []
        for i in range(per_shard):
            key = f"{s:05d}{i:04d}"
            samples.append(
                {
                    "__key__": key,
                    "jpg": jpeg_bytes(s * 1000 + i),
                    "txt": f"sample {key}".encode(),
                    "json": json.dumps({"key": key, "width": 96}).encode(),
                }
            )
        write_tar(root / f"{s:05d}.tar", samples)
    return root


def write_table(path: Path, table: pa.Table) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    elif path.suffix == ".csv":
        pcsv.write_csv(table, path)
    else:
        path.write_text("".join(json.dumps(row) + "\n" for row in table.to_pylist()))
    return path
