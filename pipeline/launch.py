"""Launch a latent command on a cluster: one ``JobConfig`` renders every kind of job.

``render_rayjob`` (a KubeRay ``RayJob``), ``render_sbatch`` (a SLURM script that starts a Ray head and
workers across the allocation, then runs the command on the head) and ``submit_job`` (the Ray Jobs
API of a running cluster) all take the same config (``pipeline.config.JobConfig``), so the manifest, the script and
the submission never drift apart. The command always joins the job's cluster (``ray.address=auto``).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import JobConfig, JobKind
from pipeline.errors import LatentError

RAYJOB_API = "ray.io/v1"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def cluster_command(command: str) -> str:
    """``command`` set to join the job's cluster: ``ray.address=auto`` unless it names an address."""
    command = command.strip()
    if not command:
        raise LatentError("command is empty: give the latent command to run after `--`")
    words = shlex.split(command)
    if words[0] == "latent" and not any(w.startswith(("ray.address=", "++ray.address=")) for w in words):
        command += " ray.address=auto"
    return command


def runtime_env(cfg: JobConfig, local: bool) -> dict[str, Any]:
    """The job's Ray runtime env; ``local``: a working_dir folder on this machine may be uploaded."""
    env: dict[str, Any] = {}
    rt = cfg.runtime_env
    if rt.working_dir:
        if "://" in rt.working_dir:
            env["working_dir"] = rt.working_dir
        elif local:
            path = Path(rt.working_dir).expanduser().resolve()
            if not path.is_dir():
                raise LatentError(f"runtime_env.working_dir={rt.working_dir}: no such folder")
            env["working_dir"] = str(path)
            env["excludes"] = list(rt.excludes)
        else:
            raise LatentError(
                f"runtime_env.working_dir={rt.working_dir}: kind={cfg.kind.value} needs a remote zip URI "
                f"(s3://…/latent.zip), or null with latent installed in the image"
            )
    if rt.pip:
        env["pip"] = list(rt.pip)
    if rt.env_vars:
        env["env_vars"] = {str(k): str(v) for k, v in rt.env_vars.items()}
    return env


def _check(cfg: JobConfig) -> None:
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", cfg.name) or len(cfg.name) > 48:
        raise LatentError(f"name={cfg.name}: use lowercase letters, digits and '-' (at most 48), as Kubernetes needs")
    for key in ("cpus", "count", "gpus"):
        if getattr(cfg.workers, key) < 0:
            raise LatentError(f"workers.{key}={getattr(cfg.workers, key)}: must not be negative")
    if cfg.head.cpus < 1 or cfg.workers.cpus < 1:
        raise LatentError("head.cpus and workers.cpus must be at least 1")


# --- Kubernetes: a KubeRay RayJob ------------------------------------------------------------------


def _container(name: str, image: str, cpus: int, memory: str, gpus: int, ports: list[dict] | None = None) -> dict:
    limits: dict[str, Any] = {"cpu": str(cpus), "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "resources": {"limits": limits, "requests": dict(limits)},
    }
    if ports:
        container["ports"] = ports
    return container


def render_rayjob(cfg: JobConfig) -> dict[str, Any]:
    """The KubeRay ``RayJob`` (ray.io/v1) that creates a cluster, runs the command, and tears it down."""
    _check(cfg)
    import ray

    metadata: dict[str, Any] = {"name": cfg.name, "labels": {"app.kubernetes.io/name": "latent"}}
    if cfg.k8s.namespace:
        metadata["namespace"] = cfg.k8s.namespace
    head = _container(
        "ray-head",
        cfg.k8s.image,
        cfg.head.cpus,
        cfg.head.memory,
        0,
        ports=[
            {"containerPort": 6379, "name": "gcs-server"},
            {"containerPort": 8265, "name": "dashboard"},
        ],
    )
    worker = _container("ray-worker", cfg.k8s.image, cfg.workers.cpus, cfg.workers.memory, cfg.workers.gpus)
    spec: dict[str, Any] = {
        "entrypoint": cluster_command(cfg.command),
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": cfg.k8s.ttl_seconds,
        "rayClusterSpec": {
            "rayVersion": ray.__version__,
            "headGroupSpec": {
                # the head offers head.cpus to tasks; the driver of the job runs there too
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": str(cfg.head.cpus)},
                "template": {"spec": {"containers": [head]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "workers",
                    "replicas": cfg.workers.count,
                    "minReplicas": cfg.workers.count,
                    "maxReplicas": cfg.workers.count,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [worker]}},
                }
            ],
        },
    }
    env = runtime_env(cfg, local=False)
    if env:
        import yaml

        spec["runtimeEnvYAML"] = yaml.safe_dump(env, sort_keys=False)
    return {"apiVersion": RAYJOB_API, "kind": "RayJob", "metadata": metadata, "spec": spec}


# --- SLURM: an sbatch script -----------------------------------------------------------------------

SBATCH = """#!/bin/bash
# {name}: a Ray cluster across the SLURM allocation (head on the first node, one worker per other
# node), then the latent command on the head. Rendered by `latent render-job kind=slurm`; submit
# with `sbatch {script}`.
{directives}
set -euo pipefail

{setup}
export RAY_USAGE_STATS_ENABLED=0

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head_node=${{nodes[0]}}
head_ip=$(hostname --ip-address | awk '{{print $1}}')  # this script runs on the first node
port={port}
export RAY_ADDRESS="$head_ip:$port"
cpus=${{SLURM_CPUS_PER_TASK:-{cpus}}}

echo "ray head on $head_node ($RAY_ADDRESS), ${{#nodes[@]}} nodes"
srun --nodes=1 --ntasks=1 --overlap -w "$head_node" \\
  ray start --head --node-ip-address="$head_ip" --port="$port" --num-cpus="$cpus" --num-gpus={gpus} --block &
for _ in $(seq 60); do ray status --address "$RAY_ADDRESS" >/dev/null 2>&1 && break; sleep 5; done
ray status --address "$RAY_ADDRESS" >/dev/null

for node in "${{nodes[@]:1}}"; do
  srun --nodes=1 --ntasks=1 --overlap -w "$node" \\
    ray start --address "$RAY_ADDRESS" --num-cpus="$cpus" --num-gpus={gpus} --block &
done
# wait until every node has joined (at most 10 minutes)
for _ in $(seq 120); do
  alive=$(python -c "import ray; ray.init(logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))")
  [ "$alive" -ge "${{#nodes[@]}}" ] && break
  sleep 5
done
echo "$alive of ${{#nodes[@]}} nodes joined"

{command}
"""


def _slurm_memory(memory: str) -> str:
    """A Kubernetes quantity as SLURM's --mem (16Gi -> 16G)."""
    match = re.fullmatch(r"(\d+)([KMGT])i?", memory.strip())
    if not match:
        raise LatentError(f"workers.memory={memory}: use a size like 32Gi or 32G")
    return f"{match.group(1)}{match.group(2)}"


def render_sbatch(cfg: JobConfig) -> str:
    """The sbatch script: Ray head and workers across the allocation, then the command on the head."""
    _check(cfg)
    directives = [
        f"--job-name={cfg.name}",
        f"--nodes={cfg.workers.count + 1}",
        "--ntasks-per-node=1",
        "--exclusive",
        f"--cpus-per-task={cfg.workers.cpus}",
        f"--mem={_slurm_memory(cfg.workers.memory)}",
        f"--time={cfg.slurm.time}",
        f"--output={cfg.name}-%j.out",
    ]
    if cfg.workers.gpus:
        directives.append(f"--gpus-per-node={cfg.workers.gpus}")
    if cfg.slurm.partition:
        directives.append(f"--partition={cfg.slurm.partition}")
    if cfg.slurm.account:
        directives.append(f"--account={cfg.slurm.account}")
    if cfg.runtime_env.pip:
        raise LatentError(
            "runtime_env.pip: a SLURM job runs in the environment slurm.setup prepares on every node "
            "(a venv on the shared filesystem); install the packages there"
        )
    command = cluster_command(cfg.command)
    if cfg.runtime_env.working_dir and "://" not in cfg.runtime_env.working_dir:
        command = f"cd {shlex.quote(cfg.runtime_env.working_dir)}\n{command}"
    exports = "".join(f"export {k}={shlex.quote(str(v))}\n" for k, v in cfg.runtime_env.env_vars.items())
    return SBATCH.format(
        name=cfg.name,
        script=f"{cfg.name}.sbatch",
        directives="\n".join(f"#SBATCH {d}" for d in directives),
        setup=(cfg.slurm.setup.strip() + "\n" + exports).strip(),
        port=cfg.slurm.port,
        cpus=cfg.workers.cpus,
        gpus=cfg.workers.gpus,
        command=command,
    )


# --- Ray Jobs API ------------------------------------------------------------------------------------


def render_submission(cfg: JobConfig) -> str:
    """The `ray job submit` command line equivalent to ``submit_job``."""
    env = runtime_env(cfg, local=True)
    words = ["ray", "job", "submit", f"--address={cfg.address}", f"--submission-id={cfg.name}-$(date +%s)"]
    if env:
        words.append(f"--runtime-env-json={json.dumps(env)}")
    if not cfg.wait:
        words.append("--no-wait")
    return " ".join(shlex.quote(w) if not w.startswith("--submission-id") else w for w in words) + (
        " -- " + cluster_command(cfg.command)
    )


@dataclass
class Submission:
    submission_id: str
    status: str
    seconds: float
    logs: str


def submit_job(cfg: JobConfig, log_to: Any = None) -> Submission:
    """Submit the command through the Jobs API at ``cfg.address``; with ``cfg.wait``, follow it to the end."""
    from ray.job_submission import JobSubmissionClient

    started = time.monotonic()
    try:
        client = JobSubmissionClient(cfg.address)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise LatentError(f"address: no Ray Jobs API at '{cfg.address}' (the head's dashboard port): {err}") from err
    submission_id = client.submit_job(
        entrypoint=cluster_command(cfg.command),
        runtime_env=runtime_env(cfg, local=True) or None,
        submission_id=f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        metadata={"latent": "submit-job"},
    )
    if not cfg.wait:
        return Submission(submission_id, str(client.get_job_status(submission_id)), 0.0, "")
    shown = 0
    status = ""
    while True:
        status = str(client.get_job_status(submission_id).value)
        logs = client.get_job_logs(submission_id)
        if log_to is not None and len(logs) > shown:
            log_to.write(logs[shown:])
            log_to.flush()
            shown = len(logs)
        if status in TERMINAL:
            break
        if time.monotonic() - started > cfg.timeout_s:
            client.stop_job(submission_id)
            raise LatentError(f"job {submission_id} ran past timeout_s={cfg.timeout_s}; stopped it")
        time.sleep(1.0)
    return Submission(submission_id, status, round(time.monotonic() - started, 2), client.get_job_logs(submission_id))


# --- the commands ----------------------------------------------------------------------------------


# --- `latent serve … backend=ray` as a Ray Serve application ------------------------------------------

SERVE_IMPORT_PATH = "pipeline.cli:serve_application"  # builds the application from `latent serve` keys
SERVE_APP_NAME = "latent"
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
    words = ["serve", "run", "--route-prefix", "/", SERVE_IMPORT_PATH, *(f"{k}={v}" for k, v in args.items())]
    return shlex.join(words)


def render_rayservice(cfg: JobConfig, args: dict[str, str]) -> dict[str, Any]:
    """A KubeRay ``RayService`` (ray.io/v1): the cluster of the job's RayJob, serving the application."""
    import yaml

    job = render_rayjob(cfg)
    application: dict[str, Any] = {
        "name": SERVE_APP_NAME,
        "import_path": SERVE_IMPORT_PATH,
        "route_prefix": "/",
        "args": args,
    }
    env = runtime_env(cfg, local=False)
    if env:
        application["runtime_env"] = env
    spec = {
        "serveConfigV2": yaml.safe_dump({"applications": [application]}, sort_keys=False),
        "rayClusterConfig": job["spec"]["rayClusterSpec"],
    }
    return {"apiVersion": RAYJOB_API, "kind": "RayService", "metadata": job["metadata"], "spec": spec}


def render_job(cfg: JobConfig) -> str:
    if (args := serve_args(cfg.command)) is not None:  # a Ray Serve application, not a job
        if cfg.kind == JobKind.k8s:
            import yaml

            header = (
                f"# KubeRay RayService rendered by `latent render-job kind=k8s`: kubectl apply -f {cfg.name}.yaml\n"
            )
            return header + yaml.safe_dump(render_rayservice(cfg, args), sort_keys=False, width=1000)
        if cfg.kind == JobKind.ray:
            return f"# on a machine of the cluster (RAY_ADDRESS set):\n{serve_run_line(args)}\n"
    if cfg.kind == JobKind.k8s:
        import yaml

        header = f"# KubeRay RayJob rendered by `latent render-job kind=k8s`; apply: kubectl apply -f {cfg.name}.yaml\n"
        return header + yaml.safe_dump(render_rayjob(cfg), sort_keys=False, width=1000)
    if cfg.kind == JobKind.slurm:
        return render_sbatch(cfg)
    return render_submission(cfg) + "\n"


def run_render_job(cfg: JobConfig) -> str:
    """`latent render-job`: print the job (or write it to ``cfg.out``)."""
    text = render_job(cfg)
    if cfg.out:
        Path(cfg.out).write_text(text)
        if cfg.kind == JobKind.slurm:
            Path(cfg.out).chmod(0o755)
        print(f"latent render-job: wrote {cfg.kind.value} job to {cfg.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return text


def run_submit_job(cfg: JobConfig) -> Submission:
    """`latent submit-job`: run the command on the cluster at ``cfg.address`` through the Ray Jobs API."""
    result = submit_job(cfg, log_to=sys.stdout)
    print(f"latent submit-job: {result.submission_id} {result.status} after {result.seconds:.1f} s", file=sys.stderr)
    if cfg.wait and result.status != "SUCCEEDED":
        raise LatentError(f"job {result.submission_id} ended {result.status}; its logs are above")
    return result
