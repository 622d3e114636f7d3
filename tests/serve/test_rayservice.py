"""`latent render-job` of `latent serve backend=ray`: a KubeRay RayService and a `serve run` line."""

from __future__ import annotations

import shlex

import yaml

from pipeline.cli import command_override, compose
from pipeline.launch import render_job

SERVE = ["latent", "serve", "index.path=/data/idx", "backend=ray", "replicas=2", "port=9000"]


def job(*overrides: str):
    return compose("job", command_override([*overrides, "--", *SERVE]))


def test_rayservice_serves_the_application_on_the_jobs_cluster():
    manifest = yaml.safe_load(render_job(job("kind=k8s", "name=search", "workers.count=3")))
    assert manifest["kind"] == "RayService" and manifest["metadata"]["name"] == "search"
    (app,) = yaml.safe_load(manifest["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "pipeline.cli:serve_application" and app["route_prefix"] == "/"
    assert app["args"] == {"index.path": "/data/idx", "replicas": "2"}  # backend and port: the cluster's
    assert manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["replicas"] == 3


def test_serve_run_line_and_the_builder_take_the_same_keys():
    line = render_job(job("kind=ray")).splitlines()[-1]
    words = shlex.split(line)
    assert words[:5] == ["serve", "run", "--route-prefix", "/", "pipeline.cli:serve_application"]
    args = dict(w.split("=", 1) for w in words[5:])
    cfg = compose("serve", [f"{k}={v}" for k, v in args.items()])  # what serve_application composes
    assert cfg.index.path == "/data/idx" and cfg.replicas == 2


def test_other_commands_still_render_jobs():
    cfg = compose("job", command_override(["kind=k8s", "--", "latent", "serve", "index.path=/x"]))
    assert yaml.safe_load(render_job(cfg))["kind"] == "RayJob"
