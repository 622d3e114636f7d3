"""`latent render-job … -- latent serve … backend=ray`: the Ray Serve application as a KubeRay ``RayService``
(kind=k8s) or as a ``serve run`` launch line (kind=ray), both built by ``pipeline.serve.ray_app:app_builder``
from the same `latent serve` keys."""

from __future__ import annotations

import shlex
from typing import Any

from pipeline.config import JobConfig

IMPORT_PATH = "pipeline.serve.ray_app:app_builder"
APP_NAME = "latent"
_PLACED_BY_RAY = ("backend", "ray.address", "host", "port")  # the cluster decides these


def serve_args(command: str) -> dict[str, str] | None:
    """The `latent serve` keys of a ``latent serve … backend=ray`` command (None for any other command)."""
    words = shlex.split(command)
    if words[:2] != ["latent", "serve"] or "backend=ray" not in words[2:]:
        return None
    pairs = [w.split("=", 1) for w in words[2:] if "=" in w]
    return {key.lstrip("+"): value for key, value in pairs if key.lstrip("+") not in _PLACED_BY_RAY}


def serve_run_line(args: dict[str, str]) -> str:
    """The ``serve run`` command that deploys the application on a running cluster (``RAY_ADDRESS``)."""
    return shlex.join(["serve", "run", "--route-prefix", "/", IMPORT_PATH, *(f"{k}={v}" for k, v in args.items())])


def render_rayservice(cfg: JobConfig, args: dict[str, str]) -> dict[str, Any]:
    """A KubeRay ``RayService`` (ray.io/v1): the cluster of the job's RayJob, serving the application."""
    import yaml

    from pipeline.launch import RAYJOB_API, render_rayjob, runtime_env

    job = render_rayjob(cfg)
    application: dict[str, Any] = {"name": APP_NAME, "import_path": IMPORT_PATH, "route_prefix": "/", "args": args}
    env = runtime_env(cfg, local=False)
    if env:
        application["runtime_env"] = env
    spec = {
        "serveConfigV2": yaml.safe_dump({"applications": [application]}, sort_keys=False),
        "rayClusterConfig": job["spec"]["rayClusterSpec"],
    }
    return {"apiVersion": RAYJOB_API, "kind": "RayService", "metadata": job["metadata"], "spec": spec}
