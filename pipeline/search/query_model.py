"""The query encoder's model: the one that made an index's vectors, checked against its fingerprint."""

from __future__ import annotations

import dataclasses
import os

from pipeline.config import SearchModelConfig
from pipeline.encode.model import ModelSpec, describe_model, preprocess_overrides, resolve_model
from pipeline.errors import LatentError, QueryError
from pipeline.index.store.format import IndexInfo


def _gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_query_model(info: IndexInfo, cfg: SearchModelConfig, gpus: int | None = None) -> ModelSpec:
    """The ModelSpec of the model that made the index's vectors, checked against its fingerprint.

    ``gpus``: the GPUs the encoder may use (default: those this process sees), for ``cfg.device=auto``."""
    import open_clip

    from pipeline.runtime import resolve_device, resolve_precision

    fingerprint = info.embedding.model if info.embedding is not None else None
    if not fingerprint:
        raise QueryError(
            "this index has no model fingerprint (its vectors were not made by `latent embed`, e.g. .npy "
            "inputs): it answers vector queries only"
        )
    name = fingerprint.get("name")
    if name not in open_clip.list_models():
        raise QueryError(
            f"the index's vectors come from model '{name}', which is not an open_clip model known here: "
            f"it answers vector queries only"
        )
    recorded, sha = fingerprint.get("pretrained"), fingerprint.get("checkpoint_sha256")
    tag = recorded if recorded in open_clip.list_pretrained_tags_by_model(name) else None
    path = fingerprint.get("checkpoint_path")  # where embed loaded a checkpoint file from (absolute)
    if cfg.pretrained:
        weights = cfg.pretrained
    elif sha is None:
        weights = None  # random weights, seeded: every process builds the same model
    elif tag is not None:
        weights = tag
    elif path and os.path.isfile(path):
        weights = path  # the file embed read: used while its sha256 still matches (checked below)
    else:
        where = f" (it was at {path}, which is gone)" if path else ""
        raise LatentError(
            f"the index was built with {name} weights from the checkpoint file '{recorded}' (sha256 {sha}){where}: "
            f"point at that file with model.pretrained=/path/to/{recorded}"
        )
    device = resolve_device(cfg.device, _gpus() if gpus is None else gpus)
    spec = resolve_model(name, weights, device, resolve_precision(cfg.precision, device))
    if spec.checkpoint_sha256 != sha:
        got = f"sha256 {spec.checkpoint_sha256}" if spec.checkpoint_sha256 else "random weights"
        want = f"sha256 {sha}" if sha else "random weights"
        if not cfg.pretrained and weights == path:
            raise LatentError(
                f"the checkpoint the index was built from, {path}, has changed since ({got}, the index's {want}): "
                f"point at the original weights with model.pretrained=/path/to/{recorded}"
            )
        raise LatentError(
            f"model.pretrained={weights}: these weights ({got}) are not the ones the index was built with "
            f"({want}, '{recorded}')"
        )
    if tag is not None:  # a tag's own settings hold even when its weights come from a local file
        tag_cfg = open_clip.get_pretrained_cfg(name, tag)
        overrides = preprocess_overrides(tag_cfg)
        spec = dataclasses.replace(
            spec, quick_gelu=bool(tag_cfg.get("quick_gelu", False)), preprocess_overrides=overrides
        )
    described = describe_model(spec).fingerprint
    problems = [
        f"{key}: {described.get(key)} != {fingerprint.get(key)}"
        for key in ("dim", "quick_gelu", "preprocess", "context_length")
        if key in fingerprint and described.get(key) != fingerprint.get(key)
    ]
    if described["dim"] != info.dim:
        problems.append(f"dim: the model makes {described['dim']}-d vectors, the index holds {info.dim}-d")
    if problems:
        raise LatentError(f"model {name} does not match the index's model fingerprint: {'; '.join(problems)}")
    return spec
