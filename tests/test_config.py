from __future__ import annotations

import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import MissingMandatoryValue

from pipeline.config import EmbedConfig, InputFormat, Modality, compose


def test_compose_gives_typed_defaults_from_conf():
    cfg = compose("embed", ["input.path=/data", "output.path=/out"])
    assert isinstance(cfg, EmbedConfig)
    assert cfg.input.format is InputFormat.auto
    assert cfg.modality is Modality.auto
    assert cfg.model.name == "ViT-B-32"
    assert cfg.batch_size > 0


def test_unknown_key_is_named():
    with pytest.raises(ConfigCompositionException, match="batch_sise"):
        compose("embed", ["input.path=/data", "output.path=/out", "batch_sise=3"])


def test_wrong_type_is_named():
    with pytest.raises(Exception, match="batch_size"):
        compose("embed", ["input.path=/data", "output.path=/out", "batch_size=many"])


def test_missing_input_is_named():
    with pytest.raises(MissingMandatoryValue, match="input.path"):
        compose("embed", ["output.path=/out"])


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_lists_commands_and_keys(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0 and "embed" in top.stdout
    keys = run_cli("embed", "--help", cwd=tmp_path)
    assert keys.returncode == 0
    for key in ("input:", "path:", "batch_size:", "max_error_fraction:", "pretrained:"):
        assert key in keys.stdout


@pytest.mark.parametrize(
    ("override", "named"),
    [("nope=1", "nope"), ("batch_size=abc", "batch_size"), ("input.format=tiff", "input.format")],
)
def test_cli_bad_config_names_the_key_and_fails(tmp_path, override, named):
    result = run_cli("embed", "input.path=x", "output.path=y", override, cwd=tmp_path)
    assert result.returncode != 0
    assert named in result.stderr


def test_cli_missing_input_names_the_key(tmp_path):
    result = run_cli("embed", "output.path=y", cwd=tmp_path)
    assert result.returncode != 0
    assert "input.path" in result.stderr
