"""Decode a batch of JPEGs where the encoder runs: nvJPEG on the GPU, then open_clip's resize and crop as tensors.

The CPU path (preprocess.py) decodes with Pillow in decode tasks and ships pixels to the encoder.
On a GPU that costs a CPU core per ~200 images/s and 3-5x the bytes through the object store; here
the encoder receives the raw bytes and turns a whole batch into pixels on its own device:

  1. ``inspect`` reads each image's header (no decoding): JPEGs in RGB or grey within the pixel
     limit go to the batch decoder; anything else (PNG, CMYK, too large, unreadable) goes to the
     CPU path one by one, where broken files become recorded errors as before;
  2. ``torchvision.io.decode_jpeg`` decodes the list at once on the device (nvJPEG on CUDA; the same
     call runs libjpeg on CPU tensors, which is how CI checks this code), or nvImageCodec's batch
     decoder when ``nvidia.nvimgcodec`` is installed (GPU only; not exercised in CI); a batch the
     decoder refuses is retried image by image, and the images it still refuses take the CPU path;
  3. ``TensorTransform`` applies the geometry of open_clip's eval transform (its own Resize /
     ResizeKeepRatio / CenterCrop / CenterCropOrPad steps, read from the transform object, with
     their interpolation and antialiasing) to uint8 CHW tensors, grouped by input shape.

The result is the same NxHxWx3 uint8 batch that the CPU path produces, so the encoder's
normalisation and forward pass are shared. Vectors differ slightly from the CPU path (another JPEG
decoder, torch's antialiased bicubic instead of Pillow's): docs/benchmarks.md measures the cosine.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image

from pipeline.encode.preprocess import BadImage, ImagePrep, decode_image, keep_ratio_size
from pipeline.errors import LatentError

log = logging.getLogger(__name__)

GPU_MODES = ("RGB", "L")  # JPEG colour modes the batch decoder takes; CMYK/YCCK go to the CPU path


class UnsupportedTransform(ValueError):
    """An open_clip transform step that has no tensor equivalent here (decode on the CPU instead)."""


def _interpolation(step) -> object:
    from torchvision.transforms import InterpolationMode

    mode = getattr(step, "interpolation", InterpolationMode.BICUBIC)
    return mode if isinstance(mode, InterpolationMode) else InterpolationMode(mode)


@dataclass
class TensorTransform:
    """The geometric steps of an open_clip eval transform, applied to uint8 (N)CHW tensors on any device."""

    steps: list[Callable[[torch.Tensor], torch.Tensor]]
    size: tuple[int, int]

    @classmethod
    def from_transform(cls, transform, size: tuple[int, int]) -> TensorTransform:
        import torchvision.transforms.functional as F
        from open_clip.transform import ResizeKeepRatio, center_crop_or_pad
        from torchvision.transforms import CenterCrop, Resize

        steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
        for step in transform.transforms:
            name = type(step).__name__
            if isinstance(step, Resize):
                steps.append(_resize(step.size, _interpolation(step), step.max_size))
            elif isinstance(step, ResizeKeepRatio):
                if step.random_scale_prob or step.random_aspect_prob:
                    raise UnsupportedTransform("ResizeKeepRatio with random scale/aspect (a training transform)")
                interpolation = _interpolation(step)

                def keep_ratio(x, s=step, i=interpolation):
                    return F.resize(x, keep_ratio_size(*x.shape[-2:], s.size, s.longest), i, antialias=True)

                steps.append(keep_ratio)
            elif isinstance(step, CenterCrop):
                steps.append(lambda x, s=list(step.size): F.center_crop(x, s))
            elif name == "CenterCropOrPad":
                steps.append(lambda x, s=list(step.size), f=step.fill: center_crop_or_pad(x, s, fill=f))
            elif name in ("MaybeConvertMode", "_convert_to_rgb") or getattr(step, "__name__", "") == "_convert_to_rgb":
                continue  # tensors are decoded as RGB already
            elif name in ("MaybeToTensor", "ToTensor", "Normalize"):
                break  # the encoder normalises (ImagePrep.to_tensor_normalized)
            else:
                raise UnsupportedTransform(f"no tensor version of open_clip transform step {name}")
        return cls(steps, tuple(size))

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """NxCxHxW (or CxHxW) uint8 -> the same layout at the model's input size, uint8."""
        for step in self.steps:
            images = step(images)
        return images


def _resize(size, interpolation, max_size) -> Callable[[torch.Tensor], torch.Tensor]:
    import torchvision.transforms.functional as F

    def resize(x: torch.Tensor) -> torch.Tensor:
        # torchvision computes the output size exactly as for PIL images (shorter edge = size, the
        # other truncated); antialias=True is Pillow's behaviour when shrinking.
        return F.resize(x, size, interpolation, max_size=max_size, antialias=True)

    return resize


@dataclass
class Routed:
    """Where each image of a batch goes: indices for the batch decoder and for the CPU path."""

    batch: list[int]
    cpu: list[int]


def inspect(blobs: list[bytes | None], max_pixels: int) -> Routed:
    """Read headers only: JPEGs the batch decoder can take vs everything else (None: skipped rows)."""
    batch, cpu = [], []
    for i, data in enumerate(blobs):
        if data is None:
            continue
        try:
            with Image.open(io.BytesIO(data)) as image:
                ok = image.format == "JPEG" and image.mode in GPU_MODES
                ok = ok and image.size[0] * image.size[1] <= max_pixels
        except Exception:  # unreadable header: the CPU path records why
            ok = False
        (batch if ok else cpu).append(i)
    return Routed(batch, cpu)


class BatchImageDecoder:
    """Raw image bytes -> NxHxWx3 uint8 on ``device``, JPEGs decoded as one batch, the rest one by one."""

    def __init__(self, prep: ImagePrep, transform, device: str | torch.device, max_pixels: int) -> None:
        self.prep = prep
        self.tensor_transform = TensorTransform.from_transform(transform, prep.size)
        self.device = torch.device(device)
        self.max_pixels = max_pixels
        self.fallbacks = 0  # images that took the CPU path (not JPEG, refused by the decoder, broken)

    def _nvimgcodec(self):
        """nvImageCodec's batch decoder when it is installed and the device is a GPU; else None (torchvision)."""
        if not hasattr(self, "_nv"):
            self._nv = None
            if self.device.type == "cuda":
                try:
                    from nvidia import nvimgcodec

                    self._nv = nvimgcodec.Decoder(device_id=self.device.index or 0)
                except Exception:  # not installed, or no usable backend: torchvision's nvJPEG does it
                    self._nv = None
        return self._nv

    def _decode_nvimgcodec(self, decoder, blobs: list[bytes]) -> list[torch.Tensor | None] | None:
        """nvImageCodec's batch decode (None per image it refuses); None when the call itself fails."""
        try:
            images = decoder.decode(blobs)
            out: list[torch.Tensor | None] = []
            for image in images:
                tensor = None if image is None else torch.from_dlpack(image.to_dlpack())
                out.append(tensor.permute(2, 0, 1) if tensor is not None and tensor.shape[-1] == 3 else None)
            return out
        except Exception as err:  # an unexpected failure of the optional decoder: torchvision's path instead
            log.warning("nvImageCodec failed on a batch (%s); decoding it with torchvision", err)
            return None

    def _decode_jpegs(self, blobs: list[bytes]) -> list[torch.Tensor | None]:
        """Decode on the device: the whole list at once, or image by image when the batch is refused."""
        from torchvision.io import ImageReadMode, decode_jpeg

        nv = self._nvimgcodec()
        if nv is not None and (decoded := self._decode_nvimgcodec(nv, blobs)) is not None:
            return decoded

        tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        try:
            return list(decode_jpeg(tensors, mode=ImageReadMode.RGB, device=self.device))
        except RuntimeError:
            pass
        out: list[torch.Tensor | None] = []
        for tensor in tensors:
            try:
                out.append(decode_jpeg(tensor, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                out.append(None)
        return out

    def _resize_all(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        """Apply the transform to decoded CHW images, batching images of the same shape."""
        out: list[torch.Tensor | None] = [None] * len(images)
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(i)
        for indices in groups.values():
            resized = self.tensor_transform(torch.stack([images[i] for i in indices]))
            for i, image in zip(indices, resized):
                out[i] = image
        return out  # type: ignore[return-value]

    def __call__(self, blobs: list[bytes | None]) -> tuple[torch.Tensor, list[str | None]]:
        """Pixels for every row (zeros where it failed or was None) and each row's error (None: fine)."""
        height, width = self.prep.size
        pixels = torch.zeros((len(blobs), height, width, 3), dtype=torch.uint8, device=self.device)
        errors: list[str | None] = [None] * len(blobs)
        routed = inspect(blobs, self.max_pixels)
        cpu = list(routed.cpu)
        if routed.batch:
            decoded = self._decode_jpegs([blobs[i] for i in routed.batch])
            good = [(i, t) for i, t in zip(routed.batch, decoded) if t is not None and t.shape[0] == 3]
            cpu += [i for i, t in zip(routed.batch, decoded) if t is None or t.shape[0] != 3]
            if good:
                resized = self._resize_all([t for _, t in good])
                index = torch.tensor([i for i, _ in good], device=self.device)
                pixels[index] = torch.stack(resized).permute(0, 2, 3, 1)
        self.fallbacks += len(cpu)
        for i in sorted(cpu):
            try:
                array = self.prep.prepare(decode_image(blobs[i], self.max_pixels))
            except BadImage as err:
                errors[i] = str(err)
                continue
            pixels[i] = torch.tensor(array, device=self.device)
        return pixels, errors


def decode_in_encoder(requested, encoder_device: str, transform) -> bool:
    """decode.device (auto|cpu|cuda) -> whether the encoder decodes images itself; decided once, on the driver.

    auto: on the GPU when the encoder is on one and the model's transform has a tensor version."""
    requested = getattr(requested, "value", requested)
    if requested == "cpu":
        return False
    if encoder_device != "cuda":
        if requested == "cuda":
            raise LatentError("decode.device=cuda needs the encoder on a GPU (model.device); use auto or cpu")
        return False
    try:
        TensorTransform.from_transform(transform, (0, 0))
    except UnsupportedTransform as err:
        if requested == "cuda":
            raise LatentError(f"decode.device=cuda: {err}; use decode.device=cpu") from err
        log.warning("decoding on the CPU: %s", err)
        return False
    return True
