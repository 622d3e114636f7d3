"""open_clip models: resolving weights at the edge, loading them inside workers, fingerprints.

``resolve_model`` runs once, on the driver: it validates the name and weights, downloads a
pretrained tag (or fails fast when offline) and returns a ``ModelSpec`` that any worker can turn
into the same model with ``load_model``, without touching the network again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from pipeline.errors import LatentError

log = logging.getLogger(__name__)

RANDOM_WEIGHTS_SEED = 0  # pretrained=null: every worker builds the same random model
HF_HOST = "huggingface.co"
PREPROCESS_KEYS = ("size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color")  # open_clip's


def preprocess_overrides(tag_cfg: dict[str, Any]) -> dict[str, Any]:
    """The preprocessing a pretrained tag sets (open_clip's ``PreprocessCfg`` keys), to force on the model."""
    return {key: tag_cfg[key] for key in PREPROCESS_KEYS if tag_cfg.get(key) is not None}


@dataclass(frozen=True)
class ModelSpec:
    """Everything a worker needs to build the model, decided on the driver."""

    name: str
    pretrained: str | None  # what the user asked for: a tag, a checkpoint path, or None
    checkpoint: str | None  # the local file holding the weights (None: random weights)
    checkpoint_sha256: str | None
    quick_gelu: bool = False
    preprocess_overrides: dict[str, Any] = field(default_factory=dict)
    model_config: dict[str, Any] | None = None  # open_clip's config, so workers know registered custom models
    device: str = "cpu"  # "cpu" or "cuda", resolved by runtime.resolve_device
    precision: str = "fp32"  # "fp32" | "fp16" | "bf16", resolved by runtime.resolve_precision

    def on(self, device: str, precision: str) -> ModelSpec:
        """The same weights placed on another device/precision."""
        return ModelSpec(**{**asdict(self), "device": device, "precision": precision})


@dataclass
class LoadedModel:
    model: torch.nn.Module
    image_transform: Any  # open_clip's eval transform (PIL image -> normalised tensor)
    tokenizer: Any
    fingerprint: dict[str, Any]


def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _hash_cache_path() -> str:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "latent", "sha256.json")


def checkpoint_sha256(path: str) -> str:
    """``file_sha256`` of a checkpoint, cached by path, size and mtime (a 600 MB file takes seconds to hash).

    The cache is a small JSON file in ~/.cache/latent (XDG_CACHE_HOME); a changed file is hashed again,
    and an unwritable cache only costs the hashing."""
    path = os.path.realpath(path)
    stat = os.stat(path)
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _hash_cache_path()
    try:
        with open(cache_file) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    if isinstance(cache.get(key), str):
        return cache[key]
    digest = file_sha256(path)
    # drop this file's stale entries and those of files that are gone
    cache = {k: v for k, v in cache.items() if not k.startswith(f"{path}|") and os.path.exists(k.split("|")[0])}
    cache[key] = digest
    try:
        os.makedirs(os.path.dirname(cache_file), exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(cache_file), prefix=".sha256-")
        with os.fdopen(fd, "w") as f:
            json.dump(cache, f)
        os.replace(tmp, cache_file)  # atomic: concurrent jobs never read half a file
    except OSError as err:
        log.debug("cannot write the checkpoint hash cache %s: %s", cache_file, err)
    return digest


def _host_reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline_error(name: str, tag: str, reason: str) -> LatentError:
    return LatentError(
        f"cannot get the pretrained weights '{tag}' for model '{name}': {reason}.\n"
        f"  Use a local checkpoint:   model.pretrained=/path/to/checkpoint.pt\n"
        f"  or random weights:        model.pretrained=null\n"
        f"  (a checkpoint is a state_dict saved with torch.save(model.state_dict(), PATH), or open_clip's "
        f"own .bin/.safetensors file)"
    )


def _cached_hf_file(hf_hub: str, cache_dir: str | None) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    model_id, filename = os.path.split(hf_hub)
    for name in filter(None, [filename, "open_clip_model.safetensors", "open_clip_pytorch_model.bin"]):
        hit = try_to_load_from_cache(model_id, name, cache_dir=cache_dir)
        if isinstance(hit, str):
            return hit
    return None


def _download_tag(name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
    import open_clip

    if tag_cfg.get("hf_hub"):
        cached = _cached_hf_file(tag_cfg["hf_hub"], cache_dir)
        if cached:
            return cached
    host = HF_HOST if tag_cfg.get("hf_hub") else (tag_cfg.get("url", "").split("/") + ["", "", ""])[2]
    if not _host_reachable(host):
        raise _offline_error(name, tag, f"{host} cannot be reached and the weights are not in the local cache")
    try:
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # the hub client's many error types all mean the same thing here
        raise _offline_error(name, tag, f"download failed ({err})") from err
    if not path:
        raise _offline_error(name, tag, "open_clip has no download location for it")
    return path


def resolve_model(
    name: str, pretrained: str | None, device: str = "cpu", precision: str = "fp32", cache_dir: str | None = None
) -> ModelSpec:
    """Validate a model name and its weights, fetch tagged weights once, and describe the result."""
    import open_clip

    if name not in open_clip.list_models():
        raise LatentError(f"model.name: unknown open_clip model '{name}'. Known: {', '.join(open_clip.list_models())}")
    config = open_clip.get_model_config(name)
    if pretrained is None or str(pretrained).lower() in ("", "none", "null", "random"):
        return ModelSpec(name, None, None, None, model_config=config, device=device, precision=precision)
    if os.path.isfile(pretrained):
        path = os.path.abspath(pretrained)
        return ModelSpec(
            name, pretrained, path, checkpoint_sha256(path), model_config=config, device=device, precision=precision
        )
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained not in tags:
        looks_like_path = os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors"))
        if looks_like_path:
            raise LatentError(f"model.pretrained: checkpoint file not found: {pretrained}")
        raise LatentError(
            f"model.pretrained: '{pretrained}' is neither a checkpoint file nor a pretrained tag of {name}. "
            f"Tags: {', '.join(tags) or '(none)'}; or model.pretrained=null for random weights."
        )
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    path = _download_tag(name, pretrained, tag_cfg, cache_dir)
    overrides = preprocess_overrides(tag_cfg)
    return ModelSpec(
        name,
        pretrained,
        path,
        checkpoint_sha256(path),
        quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
        preprocess_overrides=overrides,
        model_config=config,
        device=device,
        precision=precision,
    )


def _ensure_registered(spec: ModelSpec) -> None:
    """A model config registered only in the driver (open_clip.add_model_config) is registered here too."""
    import open_clip

    if spec.name in open_clip.list_models() or not spec.model_config:
        return
    # open_clip reads the file once, when it is added; a later rescan skips a path that is gone.
    with tempfile.TemporaryDirectory(prefix="latent-model-config-") as directory:
        path = os.path.join(directory, f"{spec.name}.json")
        with open(path, "w") as f:
            json.dump(spec.model_config, f)
        open_clip.add_model_config(path)


def _create(spec: ModelSpec, device: str) -> tuple[torch.nn.Module, Any]:
    import open_clip
    from open_clip.transform import PreprocessCfg, image_transform_v2

    _ensure_registered(spec)
    kwargs: dict[str, Any] = {"force_quick_gelu": spec.quick_gelu, "device": device}
    if spec.preprocess_overrides:
        kwargs["force_preprocess_cfg"] = dict(spec.preprocess_overrides)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # open_clip logs "initialized randomly" on the root logger
    try:
        model = _create_from_checkpoint(spec, kwargs) if spec.checkpoint and device != "meta" else None
        if model is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(RANDOM_WEIGHTS_SEED)
                model = open_clip.create_model(spec.name, pretrained=spec.checkpoint, **kwargs)
    finally:
        root.setLevel(level)
    pcfg = PreprocessCfg(**model.visual.preprocess_cfg)
    return model, image_transform_v2(pcfg, is_train=False)


def _create_from_checkpoint(spec: ModelSpec, kwargs: dict[str, Any]) -> torch.nn.Module | None:
    """The model built without random initialisation: modules on the meta device, then the checkpoint's
    tensors assigned in place (open_clip's own conversions applied). Random init of ViT-B-32 costs seconds
    of CPU that the checkpoint overwrites anyway. None when the result is not complete: the caller then
    takes open_clip's ordinary path."""
    import open_clip

    try:
        with torch.device("meta"):
            model = open_clip.create_model(spec.name, pretrained=None, **{**kwargs, "device": "meta"})
        load = model.load_state_dict
        model.load_state_dict = lambda state, strict=True: load(state, strict=strict, assign=True)  # this object only
        try:
            open_clip.load_checkpoint(model, spec.checkpoint)
        finally:
            del model.load_state_dict
        for module in model.modules():  # non-persistent buffers are not in a checkpoint: rebuild the known one
            mask = module._buffers.get("attn_mask")
            if mask is not None and mask.is_meta and mask.ndim == 2 and mask.shape[0] == mask.shape[1]:
                # open_clip's causal text mask (TextTransformer.build_causal_mask), the same on every model
                module._buffers["attn_mask"] = torch.full(tuple(mask.shape), float("-inf")).triu_(1)
    except Exception as err:  # any surprise: the ordinary path decides
        log.debug("meta-device load of %s failed (%s); loading the ordinary way", spec.checkpoint, err)
        return None
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        return None
    return model.to(kwargs.get("device", "cpu"))


@dataclass
class ModelInfo:
    fingerprint: dict[str, Any]
    image_transform: Any


def describe_model(spec: ModelSpec) -> ModelInfo:
    """The model's fingerprint and eval transform, built on the meta device: no weights, no memory."""
    with torch.device("meta"):
        model, transform = _create(ModelSpec(**{**asdict(spec), "checkpoint": None}), device="meta")
    return ModelInfo(_fingerprint(spec, model), transform)


def _fingerprint(spec: ModelSpec, model: torch.nn.Module) -> dict[str, Any]:
    pcfg = dict(model.visual.preprocess_cfg)
    size = pcfg.get("size")
    weights = spec.pretrained
    path = None
    if spec.checkpoint is not None and weights is not None and os.path.isfile(weights):
        weights = os.path.basename(weights)  # a path is local to one machine; the hash identifies it
        path = os.path.abspath(spec.pretrained)  # where it was loaded from: search reuses it while the hash matches
    return {
        "name": spec.name,
        "pretrained": weights,
        "checkpoint_sha256": spec.checkpoint_sha256,
        "checkpoint_path": path,
        "random_weights_seed": RANDOM_WEIGHTS_SEED if spec.checkpoint is None else None,
        "quick_gelu": spec.quick_gelu,
        "dim": int(model.visual.output_dim),
        "context_length": int(getattr(model, "context_length", 0) or 0),
        "preprocess": {
            "size": list(size) if isinstance(size, (list, tuple)) else [size, size],
            "mean": list(pcfg.get("mean", ())),
            "std": list(pcfg.get("std", ())),
            "interpolation": pcfg.get("interpolation"),
            "resize_mode": pcfg.get("resize_mode"),
        },
    }


def load_model(spec: ModelSpec) -> LoadedModel:
    """Build the model ``spec`` describes on its device and precision, in eval mode."""
    import open_clip

    model, transform = _create(spec, device="cpu")
    model.eval().requires_grad_(False)
    model = model.to(spec.device)
    if spec.precision in ("fp16", "bf16"):
        model = model.to(torch.float16 if spec.precision == "fp16" else torch.bfloat16)
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.WARNING)  # get_tokenizer logs its lookup at INFO on the root logger (stdout under Hydra)
    try:
        tokenizer = open_clip.get_tokenizer(spec.name)
    finally:
        root.setLevel(level)
    return LoadedModel(model, transform, tokenizer, _fingerprint(spec, model))
