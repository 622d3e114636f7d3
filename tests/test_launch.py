"""Rendering cluster jobs from conf/job.yaml: the KubeRay RayJob (schema-checked), the sbatch script
(`bash -n`), the Ray Jobs submission, and the `--` command line. The real submission to a real
cluster is in tests/cluster/."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from pipeline.cli import command_override, compose
from pipeline.errors import LatentError
from pipeline.launch import cluster_command, render_job, render_rayjob, render_sbatch, runtime_env

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(__file__).parent / "rayjob.schema.json").read_text())
COMMAND = ["latent", "embed", "input.path='s3://b/shards/{00000..00009}.tar'", "output.path=s3://b/emb"]


def job(*overrides: str, command: list[str] = COMMAND):
    return compose("job", command_override([*overrides, "--", *command]))


def test_rayjob_manifest_validates_and_carries_the_config():
    cfg = job("kind=k8s", "name=embed-photos", "workers.count=3", "workers.gpus=2", "+runtime_env.pip=[pyarrow]")
    manifest = yaml.safe_load(render_job(cfg))
    jsonschema.validate(manifest, SCHEMA)
    spec = manifest["spec"]
    assert manifest["metadata"]["name"] == "embed-photos"
    workers = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == workers["minReplicas"] == workers["maxReplicas"] == 3
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert yaml.safe_load(spec["runtimeEnvYAML"]) == {"pip": ["pyarrow"]}
    # the entrypoint is the command, unchanged but for joining the job's cluster
    assert shlex.split(spec["entrypoint"]) == [*COMMAND, "ray.address=auto"]


def test_schema_rejects_what_kuberay_would():
    manifest = render_rayjob(job("kind=k8s"))
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "two"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(manifest, SCHEMA)


def test_sbatch_script_is_valid_bash_and_matches_the_manifest(tmp_path):
    cfg = job("kind=slurm", "name=embed-photos", "workers.count=3", "slurm.partition=gpu", "workers.memory=64Gi")
    script = render_sbatch(cfg)
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    check = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    directives = [line.split(None, 1)[1] for line in script.splitlines() if line.startswith("#SBATCH")]
    assert "--nodes=4" in directives and "--partition=gpu" in directives and "--mem=64G" in directives
    assert "--job-name=embed-photos" in directives
    # the same config renders the same cluster for Kubernetes: 1 head + 3 workers running the same command
    manifest = render_rayjob(job("kind=k8s", "name=embed-photos", "workers.count=3"))
    assert manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] + 1 == 4
    assert manifest["spec"]["entrypoint"] in script.splitlines()
    assert "ray start --head" in script and 'ray start --address "$RAY_ADDRESS"' in script


def test_submission_uploads_the_project_and_keeps_the_command():
    cfg = job("kind=ray", f"runtime_env.working_dir={REPO}", "address=http://10.0.0.1:8265")
    env = runtime_env(cfg, local=True)
    assert env["working_dir"] == str(REPO) and ".venv" in env["excludes"]
    line = render_job(cfg)
    assert line.startswith("ray job submit --address=http://10.0.0.1:8265")
    assert shlex.split(line.split(" -- ", 1)[1]) == [*COMMAND, "ray.address=auto"]


def test_command_keeps_an_explicit_address_and_other_programs():
    assert cluster_command("latent index input.path=a index.path=b ray.address=ray://h:10001").count("ray.address") == 1
    assert cluster_command("python my_job.py") == "python my_job.py"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["kind=k8s", "name=Bad_Name"], "name=Bad_Name"),
        (["kind=slurm", "+runtime_env.pip=[x]"], "runtime_env.pip"),
        (["kind=k8s", "runtime_env.working_dir=."], "runtime_env.working_dir=."),
        (["kind=ray", "runtime_env.working_dir=/no/such/dir"], "no such folder"),
        (["kind=slurm", "workers.memory=lots"], "workers.memory=lots"),
    ],
)
def test_bad_job_configs_name_the_key(overrides, message):
    with pytest.raises(LatentError, match=message.replace(".", r"\.")):
        render_job(job(*overrides))


def test_cli_renders_to_a_file(tmp_path):
    out = tmp_path / "job.yaml"
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "render-job", "kind=k8s", f"out={out}", "--", *COMMAND],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert run.returncode == 0, run.stderr
    manifest = yaml.safe_load(out.read_text())
    jsonschema.validate(manifest, SCHEMA)
    assert shlex.split(manifest["spec"]["entrypoint"])[:4] == COMMAND


def test_cli_without_a_command_says_so():
    run = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "render-job", "kind=k8s"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode != 0 and "command" in run.stderr


def test_checked_in_examples_are_the_rendering_of_the_config():
    sys.path.insert(0, str(REPO / "jobs"))
    from render_examples import EXAMPLES, render

    for path in EXAMPLES:
        assert (REPO / path).read_text() == render(path), f"{path} is stale: run `make jobs`"
