"""Helpers shared by the search tests."""

from __future__ import annotations

from pipeline.config import Device, Precision, SearchModelConfig


def model_config(pretrained=None) -> SearchModelConfig:
    return SearchModelConfig(pretrained=None if pretrained is None else str(pretrained), device=Device.cpu,
                             precision=Precision.fp32)  # fmt: skip
