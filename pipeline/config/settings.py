"""The machinery of the settings: a key's default and explanation, the listing `--help` renders, checks, YAML."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import field
from typing import Any

REQUIRED: Any = "???"  # the default of a key the user must set (omegaconf reads "???" as missing, too)


def setting(default: Any, help: str) -> Any:
    """A dataclass field with its default and the one-line explanation ``--help`` shows."""
    if isinstance(default, type) and dataclasses.is_dataclass(default):
        return field(default_factory=default, metadata={"help": help})
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def describe(cls: type) -> list[tuple[str, Any, str, bool]]:
    """``(dotted key, default, explanation, is_section)`` of every key of a config class, in order."""
    rows: list[tuple[str, Any, str, bool]] = []

    def walk(node: type, prefix: str) -> None:
        for f in dataclasses.fields(node):
            key, text = f"{prefix}{f.name}", f.metadata.get("help", "")
            if dataclasses.is_dataclass(f.default_factory):  # type: ignore[arg-type]
                rows.append((key, None, text, True))
                walk(f.default_factory, f"{key}.")  # type: ignore[arg-type]
            else:
                default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
                rows.append((key, default, text, False))

    walk(cls, "")
    return rows


def missing_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``cfg`` still at ``REQUIRED``."""
    missing = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            missing += missing_keys(value, f"{prefix}{f.name}.")
        elif isinstance(value, str) and value == REQUIRED:
            missing.append(f"{prefix}{f.name}")
    return missing


def to_plain(value: Any) -> Any:
    """A config (dataclass, enum, list, dict) as plain YAML/JSON-able values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    return value


def to_yaml(cfg: Any) -> str:
    """A config as YAML, for run records."""
    import yaml

    return yaml.safe_dump(to_plain(cfg), sort_keys=False)
