"""`latent render-job` / `latent submit-job`: a latent command as a Ray job, a KubeRay RayJob or a SLURM script."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pipeline.config.settings import REQUIRED, setting


class JobKind(str, Enum):
    ray = "ray"  # a Ray Jobs API submission to a running cluster
    k8s = "k8s"  # a KubeRay RayJob manifest
    slurm = "slurm"  # an sbatch script: a Ray head and workers across the allocation, then the job


@dataclass
class JobHead:
    """The head node (k8s: its container's limits; slurm: the first node of the allocation)."""

    cpus: int = setting(4, "CPUs the head offers to tasks (the driver and the GCS need some too)")
    memory: str = setting("16Gi", "k8s: the head container's memory limit (slurm: every node gets workers.memory)")


@dataclass
class JobWorkers:
    """Each worker node; a SLURM allocation gets ``count`` + 1 nodes (the head runs tasks too)."""

    count: int = setting(2, "worker nodes besides the head")
    cpus: int = setting(8, "CPUs per worker")
    gpus: int = setting(1, "GPUs per worker: one encoder actor per GPU (resources.encoder_actors: null)")
    memory: str = setting("32Gi", "k8s quantity (32Gi) / SLURM --mem of every node (32G)")


@dataclass
class RuntimeEnvConfig:
    working_dir: str | None = setting(
        None, 'kind=ray: a local folder ("." uploads this project); k8s: a remote zip URI; null: none'
    )
    pip: list[str] = setting([], "extra pip packages installed on every node for the job, e.g. [open_clip_torch]")
    excludes: list[str] = setting(
        [".git", ".venv", "**/__pycache__", "bench/results", "demo-output", "outputs", "multirun", "*.egg-info"],
        "left out of an uploaded working_dir",
    )
    env_vars: dict[str, str] = setting({}, "environment of the job on every node: +runtime_env.env_vars.NAME=value")


@dataclass
class K8sJobConfig:
    namespace: str | None = setting(None, "null: the current namespace")
    image: str = setting(
        "rayproject/ray:2.60.0-py311", "a Ray image with latent installed (build FROM it: pip install latent)"
    )
    ttl_seconds: int = setting(3600, "the finished job's cluster stays this long for logs, then is deleted")


@dataclass
class SlurmJobConfig:
    partition: str | None = setting(None, "--partition (null: the cluster's default)")
    account: str | None = setting(None, "--account (null: none)")
    time: str = setting("04:00:00", "--time")
    setup: str = setting("source .venv/bin/activate", "shell run on every node before `ray start`: modules, the venv")
    port: int = setting(6379, "the head's GCS port")


@dataclass
class JobConfig:
    kind: JobKind = setting(JobKind.ray, "ray (submit to a running cluster) | k8s (RayJob manifest) | slurm (sbatch)")
    name: str = setting("latent-job", "the job's name (RayJob metadata.name, SLURM --job-name, submission id prefix)")
    command: str = setting(REQUIRED, "the latent command line, given after `--`")
    address: str = setting("http://127.0.0.1:8265", "kind=ray: the cluster's dashboard, which serves the Jobs API")
    wait: bool = setting(True, "kind=ray: follow the job's logs until it ends and exit with its status")
    timeout_s: int = setting(86400, "kind=ray with wait: stop the job if it runs longer than this")
    out: str | None = setting(None, "render-job: write the manifest/script here (null: print it)")
    head: JobHead = setting(JobHead, "the head node")
    workers: JobWorkers = setting(JobWorkers, "each worker node")
    runtime_env: RuntimeEnvConfig = setting(RuntimeEnvConfig, "what every node gets for the job (Ray runtime_env)")
    k8s: K8sJobConfig = setting(K8sJobConfig, "kind=k8s")
    slurm: SlurmJobConfig = setting(SlurmJobConfig, "kind=slurm")
