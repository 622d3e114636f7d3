"""The encoder: one open_clip model turning pixels and texts into L2-normalised vectors.

``ClipEncoder`` is plain Python (used by search, benchmarks and tests); ``EmbedBatches`` wraps it
as the Ray Data actor of the embed job. Device and precision come in through the ModelSpec.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from PIL import Image

from pipeline.encode.model import ModelSpec, load_model
from pipeline.encode.preprocess import ImagePrep, pixels_to_numpy
from pipeline.io.shards import vectors_to_arrow

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class ClipEncoder:
    def __init__(self, spec: ModelSpec, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)
        loaded = load_model(spec)
        self.spec = spec
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.fingerprint = loaded.fingerprint
        self.transform = loaded.image_transform
        self.prep = ImagePrep.from_transform(loaded.image_transform)
        self.dim = int(self.fingerprint["dim"])
        self.device = torch.device(spec.device)
        self.dtype = _DTYPES[spec.precision]
        self._pinned: dict[torch.dtype, torch.Tensor] = {}  # reused page-locked staging buffers

    def _to_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """Host -> device through a reused pinned buffer, so the copy is asynchronous and allocation-free.

        Reuse is safe: every encode call ends with a synchronising copy back to the host."""
        if self.device.type != "cuda":
            return tensor
        buffer = self._pinned.get(tensor.dtype)
        if buffer is None or buffer.numel() < tensor.numel():
            buffer = self._pinned[tensor.dtype] = torch.empty(tensor.numel(), dtype=tensor.dtype, pin_memory=True)
        staging = buffer[: tensor.numel()].view(tensor.shape)
        staging.copy_(tensor)
        return staging.to(self.device, non_blocking=True)

    @torch.inference_mode()
    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """NxHxWx3 uint8 (the output of ImagePrep.prepare) -> NxD float32, unit norm."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.encode_pixel_tensor(self._to_device(torch.from_numpy(np.ascontiguousarray(pixels))))

    @torch.inference_mode()
    def encode_pixel_tensor(self, pixels: torch.Tensor) -> np.ndarray:
        """NxHxWx3 uint8 already on the encoder's device (e.g. decoded there) -> NxD float32, unit norm."""
        if len(pixels) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        images = self.prep.to_tensor_normalized(pixels).to(self.dtype)
        features = self.model.encode_image(images)
        return F.normalize(features.float(), dim=-1).cpu().numpy()

    def encode_images(self, images: list[Image.Image]) -> np.ndarray:
        return self.encode_pixels(np.stack([self.prep.prepare(image) for image in images]))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> np.ndarray:
        """Texts -> NxD float32, unit norm."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        tokens = self._to_device(self.tokenizer(list(texts)))
        features = self.model.encode_text(tokens)
        return F.normalize(features.float(), dim=-1).cpu().numpy()


class EmbedBatches:
    """Ray Data actor: prepared rows in, rows with ``image_embedding``/``text_embedding`` out.

    With ``decode_images`` the rows hold the raw ``image`` bytes instead of ``pixels``: the actor decodes
    them on its own device (gpu_decode.BatchImageDecoder) and records the images it cannot use as errors.
    """

    def __init__(
        self,
        spec: ModelSpec,
        modality: str,
        dtype: str,
        threads: int | None = None,
        decode_images: bool = False,
        max_pixels: int = 89478485,
        optional: tuple[str, ...] = (),
    ) -> None:
        if threads is None and spec.device == "cpu":
            from pipeline.runtime import node_cpus

            threads = node_cpus()  # the CPUs of the node this actor landed on, not the driver's
        self.encoder = ClipEncoder(spec, threads)
        self.kinds = ["image", "text"] if modality == "both" else [modality]
        self.optional = optional  # kinds whose vector is null in rows without that input (texts of modality=auto)
        self.dtype = dtype
        self.decoder = None
        if decode_images:
            from pipeline.encode.gpu_decode import BatchImageDecoder

            enc = self.encoder
            self.decoder = BatchImageDecoder(enc.prep, enc.transform, enc.device, max_pixels)

    def _decode(self, batch: pa.Table) -> tuple[pa.Table, torch.Tensor]:
        """Raw ``image`` bytes -> pixels on the device; rows whose image fails get their error."""
        errors = batch.column("error").to_pylist()
        blobs = [b if e is None else None for b, e in zip(batch.column("image").to_pylist(), errors)]
        pixels, decode_errors = self.decoder(blobs)
        errors = [e or d for e, d in zip(errors, decode_errors)]
        batch = batch.set_column(batch.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
        return batch.drop_columns(["image"]), pixels

    def __call__(self, batch: pa.Table) -> pa.Table:
        device_pixels = None
        if self.decoder is not None and "image" in self.kinds:
            batch, device_pixels = self._decode(batch)
        ok = pc.is_null(batch.column("error")).to_numpy(zero_copy_only=False)
        for kind in self.kinds:
            vectors = np.zeros((batch.num_rows, self.encoder.dim), dtype=np.float32)
            present = ok
            if kind == "text" and kind in self.optional:
                texts = batch.column("text").to_pylist()
                present = ok & np.array([bool(t and t.strip()) for t in texts], dtype=bool)
            if present.any():
                if kind == "image" and device_pixels is not None:
                    index = torch.from_numpy(np.flatnonzero(present)).to(device_pixels.device)
                    vectors[present] = self.encoder.encode_pixel_tensor(device_pixels[index])
                elif kind == "image":
                    pixels = pixels_to_numpy(batch.column("pixels"), self.encoder.prep.size)
                    vectors[present] = self.encoder.encode_pixels(pixels[present])
                else:
                    texts = np.asarray(batch.column("text").to_pylist(), dtype=object)[present]
                    vectors[present] = self.encoder.encode_texts(texts.tolist())
            column = vectors_to_arrow(vectors, self.dtype, valid=None if present is ok else present)
            batch = batch.append_column(f"{kind}_embedding", column)
        return batch.drop_columns([c for c in ("pixels",) if c in batch.column_names])
