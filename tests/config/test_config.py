"""The settings of every command: one source of defaults (pipeline.config), checked command lines, --help."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import COMMANDS, ConfigKeyError, compose, config_name, render_help
from pipeline.config import SCHEMAS, EmbedConfig, InputConfig, InputFormat, Modality, OutputConfig, describe

REPO = Path(__file__).resolve().parents[2]
REQUIRED = {
    "embed": ["input.path=/data", "output.path=/out"],
    "index": ["input.path=/emb", "index.path=/idx"],
    "search": ["index.path=/idx"],
    "verify": ["index.path=/idx"],
    "knn": ["input.path=/q", "index.path=/idx", "output.path=/out"],
    "serve": ["index.path=/idx"],
    "job": ["command='latent embed'"],
    "map": ["input.path=/emb", "output.path=/map"],
    "path": ["index.path=/idx", "start=a", "end=b"],
}


def test_compose_gives_typed_defaults():
    cfg = compose("embed", REQUIRED["embed"])
    assert isinstance(cfg, EmbedConfig)
    assert cfg.input.format is InputFormat.auto
    assert cfg.modality is Modality.auto
    assert cfg.model.name == "ViT-B-32"


def _set(cfg, key: str, value: str):
    *path, leaf = key.split(".")
    node = cfg
    for part in path:
        node = getattr(node, part)
    setattr(node, leaf, value.strip("'"))


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_the_dataclasses_are_the_one_source_of_defaults(name):
    """conf/*.yaml only composes: what the CLI composes is the dataclass's defaults, nothing else."""
    expected = SCHEMAS[name]()
    for override in REQUIRED[name]:
        _set(expected, *override.split("=", 1))
    assert compose(name, REQUIRED[name]) == expected


def test_the_library_builds_configs_without_hydra():
    cfg = EmbedConfig(input=InputConfig(path="/data"), output=OutputConfig(path="/out"))
    assert cfg.batch_size == compose("embed", REQUIRED["embed"]).batch_size


def test_presets_set_their_keys():
    assert compose("embed", [*REQUIRED["embed"], "model=vit-l-14"]).model.name == "ViT-L-14"
    assert compose("embed", [*REQUIRED["embed"], "ray=cluster"]).ray.address == "auto"


@pytest.mark.parametrize("form", ["batchsize=8", "+batchsize=8", "++batchsize=8", "~batchsize"])
def test_unknown_key_is_refused_in_every_form(form):
    with pytest.raises(ConfigKeyError, match=r"did you mean batch_size\?"):
        compose("embed", [*REQUIRED["embed"], form])


def test_keys_under_a_mapping_are_the_users():
    cfg = compose("job", [*REQUIRED["job"], "+runtime_env.env_vars.MY_FLAG=1"])
    assert cfg.runtime_env.env_vars == {"MY_FLAG": "1"}


def test_wrong_type_is_named():
    with pytest.raises(Exception, match="batch_size"):
        compose("embed", [*REQUIRED["embed"], "batch_size=many"])


def test_missing_input_is_named():
    with pytest.raises(ConfigKeyError, match="input.path"):
        compose("embed", ["output.path=/out"])


def test_importing_the_library_imports_no_hydra_and_changes_no_global_state():
    code = """
import json, os, sys
from PIL import Image
default = Image.MAX_IMAGE_PIXELS
import pipeline.search, pipeline.index, pipeline.embed, pipeline.search.knn, pipeline.index.builder.build
import pipeline.io.sources, pipeline.serve.app
print(json.dumps({
    "hydra": sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf")),
    "pillow_guard": Image.MAX_IMAGE_PIXELS == default and default is not None,
    "omp": os.environ.get("OMP_WAIT_POLICY"),
}))
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr
    found = json.loads(run.stdout.splitlines()[-1])
    assert found == {"hydra": [], "pillow_guard": True, "omp": None}


@pytest.mark.slow  # starts a Ray of its own
def test_ray_workers_get_the_process_settings_the_library_leaves_alone():
    """A job's Ray workers run configure_process (a runtime_env hook); the driver importing the library does not."""
    code = """
import json, os, ray
from PIL import Image
from pipeline.config import RayConfig
from pipeline.runtime import init_ray
init_ray(RayConfig(num_cpus=1))

@ray.remote
def settings():
    from PIL import Image
    return Image.MAX_IMAGE_PIXELS, os.environ.get("OMP_WAIT_POLICY")

driver = [Image.MAX_IMAGE_PIXELS, os.environ.get("OMP_WAIT_POLICY")]
print(json.dumps({"worker": ray.get(settings.remote()), "driver": driver}))
ray.shutdown()
"""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.splitlines()[-1])
    assert found["worker"] == [None, "PASSIVE"]
    assert found["driver"][0] is not None and found["driver"][1] is None


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_cli_lists_commands(tmp_path):
    top = run_cli("--help", cwd=tmp_path)
    assert top.returncode == 0
    assert all(command in top.stdout for command in COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_every_key_with_its_default_and_explanation(command):
    text = render_help(command)
    for key, _default, explanation, _ in describe(SCHEMAS[config_name(command)]):
        leaf = key.rsplit(".", 1)[-1]
        line = next(
            (line for line in text.splitlines() if line.strip().startswith(f"{leaf}:") and explanation in line), None
        )
        assert explanation and line, f"{key}: no line with its explanation"


def test_cli_help_shows_defaults_and_the_overrides_given(tmp_path):
    keys = run_cli("embed", "model=vit-l-14", "--help", cwd=tmp_path)
    assert keys.returncode == 0, keys.stderr
    assert "batch_size: null" in keys.stdout and "rows per encoder batch" in keys.stdout
    assert "name: ViT-L-14" in keys.stdout


@pytest.mark.parametrize("form", ["batchsize=8", "+batchsize=8", "++batchsize=8"])
def test_cli_refuses_an_unknown_key_in_every_form(tmp_path, form):
    result = run_cli("embed", "input.path=x", "output.path=y", form, cwd=tmp_path)
    assert result.returncode == 2
    assert "did you mean batch_size?" in result.stderr


@pytest.mark.parametrize(
    ("override", "named"),
    [("nope=1", "nope"), ("batch_size=abc", "batch_size"), ("input.format=tiff", "input.format")],
)
def test_cli_bad_config_names_the_key_and_exits_2(tmp_path, override, named):
    result = run_cli("embed", "input.path=x", "output.path=y", override, cwd=tmp_path)
    assert result.returncode == 2
    assert named in result.stderr and "Traceback" not in result.stderr


def test_cli_missing_input_names_the_key(tmp_path):
    result = run_cli("embed", "output.path=y", cwd=tmp_path)
    assert result.returncode == 2
    assert "input.path" in result.stderr


def test_conf_holds_no_defaults():
    """conf/<command>.yaml: the schema, presets and Hydra's settings only."""
    for path in (REPO / "conf").glob("*.yaml"):
        import yaml

        top = set(yaml.safe_load(path.read_text()))
        assert top <= {"defaults", "hydra"}, f"{path.name} sets {top - {'defaults', 'hydra'}}"


def test_every_schema_field_has_an_explanation():
    for name, cls in SCHEMAS.items():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{name}.{f.name}"


def test_sweeps_interpolations_and_hydra_keys_pass_the_key_check_and_unknown_sweeps_do_not():
    from pipeline.cli import check_overrides

    check_overrides(
        "index", ['index.factory="IVF16,Flat",HNSW16', "index.path=/o/${hydra:job.num}", "hydra.sweep.dir=/o"]
    )
    check_overrides("embed", ["model=vit-b-32,vit-l-14", "output.path=/o/${model.name}"])
    with pytest.raises(ConfigKeyError, match="did you mean index.factory"):
        check_overrides("index", ["index.factroy=Flat,HNSW32"])
