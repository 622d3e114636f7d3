"""The edge of every job: Ray connection, device and precision (decided once), run records."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from pipeline import __version__
from pipeline.config import Device, Precision, RayConfig, to_yaml
from pipeline.errors import LatentError

log = logging.getLogger(__name__)

# Every Ray worker of a latent job runs configure_process first (a job-level runtime_env hook).
WORKER_RUNTIME_ENV = {"worker_process_setup_hook": "pipeline.runtime.configure_process"}


def configure_process() -> None:
    """The process-wide settings latent's own processes run with: applied by the CLI and, through
    ``WORKER_RUNTIME_ENV``, by every Ray worker of a job, never by importing the library.

    - Pillow's decompression-bomb guard is lifted: latent checks each image against the job's own
      limit instead (``pipeline.encode.preprocess.check_pixels``), so a limit above Pillow's works.
    - Idle OpenMP threads sleep instead of spinning: on a machine whose cores are shared (other jobs,
      Ray workers), spinning FAISS threads made builds 3x slower in our measurements. It takes effect
      only before the OpenMP runtime loads (FAISS's import); an explicit OMP_WAIT_POLICY wins.
    """
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    _few_malloc_arenas()
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its "could not load AVX512…" chatter


def _few_malloc_arenas() -> None:
    """Under an address-space limit (``ulimit -v``), glibc's 64 MiB reservation per thread's malloc arena
    (FAISS's, numba's, Ray's threads) exhausts the limit long before memory: two arenas, in this process
    (mallopt) and in the processes it starts (MALLOC_ARENA_MAX)."""
    import ctypes
    import ctypes.util
    import resource

    if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
        return
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(ctypes.util.find_library("c")).mallopt(-8, int(os.environ["MALLOC_ARENA_MAX"]))  # M_ARENA_MAX


RUNS_DIR = "runs"  # <state dir>/runs/<time>-<pid>/: config.yaml, version.json, ray.json, summary.json


# Ray's own messages that a user can do nothing about, silenced at their source when a job starts
# (never at import). The one Ray's C++ core writes straight to stderr is dropped by the CLI's filter of
# fd 2 instead (pipeline/stderr_filter.py).
_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",  # no usage-stats notice
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # latent shows one bar in rows/s instead
}
_QUIET_LOGGERS = {
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,  # we disabled its bars on purpose
    "ray.data._internal.execution.streaming_executor": logging.ERROR,  # "received 0 inputs" and the like
    "ray.data._internal.execution.operators": logging.ERROR,
    "ray._private.authentication": logging.ERROR,  # the token-authentication notice
    "ray.data._internal.issue_detection": logging.ERROR,  # "Found 1 issues" (hanging-task heuristics)
}


def quiet_ray() -> None:
    """Silence Ray's messages that the user can do nothing about (called at the edge, by init_ray)."""
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def ray_address(cfg: RayConfig) -> str:
    """Where the job runs: ``cfg.address``, else ``RAY_ADDRESS``, else "local" — a private Ray.

    "local" makes ray.init start a new Ray whatever else runs on the machine: Ray's own default
    (no address) joins the cluster its ``ray_current_cluster`` file names, which may be another
    user's cluster or a stale file pointing at nothing (Ray then retries for minutes)."""
    return cfg.address or os.environ.get("RAY_ADDRESS", "") or "local"


def runs_inline(cfg: RayConfig, rows: int | None) -> bool:
    """Whether a job of ``rows`` rows runs in this process without Ray (``ray.inline_max_rows``): only
    instead of a private Ray, never when a cluster is named."""
    return rows is not None and rows <= cfg.inline_max_rows and ray_address(cfg) == "local"


def job_gpus(cfg: RayConfig, inline: bool) -> int:
    """GPUs a job can use: its Ray cluster's, or, ``inline``, this process's (``ray.num_gpus`` caps them, as
    it caps a private Ray's)."""
    if not inline:
        return cluster_gpus()
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return count if cfg.num_gpus is None else min(count, cfg.num_gpus)


def init_ray(cfg: RayConfig) -> None:
    """Connect to the cluster at ``cfg.address`` (or ``RAY_ADDRESS``), or start a private Ray."""
    import ray
    from ray.data import DataContext

    quiet_ray()
    if not ray.is_initialized():
        common: dict[str, Any] = {"log_to_driver": True, "logging_level": logging.WARNING}
        address = ray_address(cfg)
        if address != "local":
            try:
                ray.init(address=address, runtime_env=WORKER_RUNTIME_ENV, **common)
            except (ConnectionError, RuntimeError, ValueError) as err:
                raise LatentError(f"ray.address: cannot connect to a Ray cluster at '{address}': {err}") from None
        else:
            _start_private_ray(cfg, common)
    context = DataContext.get_current()
    context.enable_progress_bars = False  # latent shows one bar in rows/s instead
    context.print_on_execution_start = False
    quiet_ray()  # ray.init configures Ray's loggers: set ours again after it


MIN_OBJECT_STORE = 128 * 1024**2  # below this, a job's blocks no longer fit Ray's object store


def address_space_room() -> tuple[int, int] | None:
    """(limit, bytes left) of this process's address-space limit (``ulimit -v``), or None without one."""
    import resource

    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit == resource.RLIM_INFINITY:
        return None
    used = 0
    with contextlib.suppress(OSError, ValueError):
        for line in open("/proc/self/status"):  # noqa: SIM115  (a tiny procfs file)
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    return limit, limit - used


def _object_store_size(cfg: RayConfig) -> int | None:
    """Ray maps its whole object store into the driver and every worker: under ``ulimit -v`` Ray's default
    (30% of memory) aborts in C++ or hangs. Sized to a quarter of what the limit leaves, or refused at once."""
    room = address_space_room()
    if room is None or cfg.object_store_memory is not None:
        return cfg.object_store_memory
    limit, left = room
    size = left // 4
    if size < MIN_OBJECT_STORE:
        raise LatentError(
            f"Ray cannot start under this process's address-space limit (ulimit -v {limit // 1024} KiB, "
            f"{max(left, 0) / 2**30:.1f} GiB left): raise it (ulimit -v unlimited), or set "
            f"ray.object_store_memory, or join a running cluster with ray.address="
        )
    log.info("address-space limit %d KiB: Ray's object store sized to %d MiB", limit // 1024, size >> 20)
    return size


def _start_private_ray(cfg: RayConfig, common: dict[str, Any], attempts: int = 2) -> None:
    import atexit

    import ray

    store = _object_store_size(cfg)
    for attempt in range(attempts):
        try:
            ray.init(
                address="local",
                num_cpus=cfg.num_cpus,
                num_gpus=cfg.num_gpus,
                object_store_memory=store,
                include_dashboard=False,
                runtime_env=WORKER_RUNTIME_ENV,
                **common,
            )
            return
        except Exception as err:  # noqa: BLE001  (Ray raises many kinds; each is the same problem to the user)
            with contextlib.suppress(Exception):
                ray.shutdown()
            reason = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            if "timed out during startup" in reason and attempt + 1 < attempts:  # Ray waits 30 s, fixed: a busy machine
                log.warning("Ray did not start within its 30 s; trying once more")
                continue
            atexit.unregister(ray.shutdown)  # shut down already: at exit it would only print a traceback
            room = address_space_room()
            if room is not None:
                raise LatentError(
                    f"Ray failed to start under this process's address-space limit (ulimit -v {room[0] // 1024} KiB; "
                    f"object store {(store or 0) >> 20} MiB): {reason or type(err).__name__}. Raise the limit "
                    f"(ulimit -v unlimited), or set ray.object_store_memory lower, or join a cluster with ray.address="
                ) from None
            raise LatentError(
                f"Ray failed to start on this machine: {reason} Check Ray's temp folder "
                f"({os.environ.get('RAY_TMPDIR', tempfile.gettempdir())}/ray: free space, permissions, a path "
                f"short enough for its sockets) and its logs there, or join a running cluster with ray.address=."
            ) from None


def ray_session() -> dict[str, Any]:
    """The Ray a job runs on, for its run record."""
    import ray

    if not ray.is_initialized():
        return {}
    context = ray.get_runtime_context()
    nodes = [n for n in ray.nodes() if n["Alive"]]
    return {"gcs_address": context.gcs_address, "nodes": len(nodes), "resources": ray.cluster_resources()}


def ray_started_here() -> bool:
    """Whether this process started the Ray it is connected to (a private Ray: its resources never grow,
    unlike a joined cluster's, which an autoscaler may scale up)."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)  # Ray's own record of the node it started or joined
    return ray.is_initialized() and bool(getattr(node, "head", False))


def draining_nodes() -> dict[str, int]:
    """Nodes being drained -> their deadline (ms since the epoch, 0: none). A node is drained when a
    preemption notice SIGTERMs its `ray start --block` (Ray 2.60 then marks it draining with reason
    PREEMPTION), by `ray drain-node`, or by the autoscaler. Private, like the accessor Ray Data's own
    actor pool reads to stop sending batches to actors on those nodes (``_NodeAwareActorPool``)."""
    from ray._private.state import state

    return dict(state.get_draining_nodes())


def cluster_gpus() -> int:
    import ray

    return int(ray.cluster_resources().get("GPU", 0))


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 1))


def cluster_cpu_nodes() -> int:
    """Alive nodes with CPUs to spare for a CPU encoder actor (2 or more: one stays for decoding); at least 1."""
    import ray

    return max(1, sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= 2))


def node_cpus() -> int:
    """CPUs that the node this process runs on declares to Ray (``ray start --num-cpus``), at most its cores."""
    import ray

    cores = os.cpu_count() or 1
    if not ray.is_initialized():
        return cores
    here = ray.get_runtime_context().get_node_id()
    declared = next((n["Resources"].get("CPU", 0) for n in ray.nodes() if n["NodeID"] == here), 0)
    return max(1, min(cores, int(declared) or cores))


def resolve_device(requested: Device, gpus: int, key: str = "model.device") -> str:
    """'cuda' or 'cpu' for a ``requested`` device, given the GPUs the job can use; decided once, at the edge."""
    if requested == Device.cuda and gpus == 0:
        raise LatentError(f"{key}=cuda, but no GPU is available to the job (use {key}=auto or cpu)")
    if requested == Device.auto:
        return "cuda" if gpus > 0 else "cpu"
    return requested.value


def resolve_precision(requested: Precision, device: str) -> str:
    if requested == Precision.auto:
        return "fp16" if device == "cuda" else "fp32"
    if requested == Precision.fp16 and device == "cpu":
        raise LatentError("model.precision=fp16 is not supported on the CPU (use fp32 or bf16)")
    return requested.value


def code_version() -> dict[str, str | None]:
    """latent's version and, when run from a git checkout, its commit."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(
            ["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, ""
    return {"latent": __version__, "git_commit": commit, "git_dirty": bool(dirty) if commit else None}


@dataclass
class RunRecord:
    """Where a run writes its resolved config, code version and summary, next to its outputs."""

    directory: str

    @classmethod
    def start(cls, state_dir: str, config: Any, ray: dict[str, Any] | None = None) -> RunRecord:
        from pipeline.io.shards import filesystem

        fs, root = filesystem(state_dir)
        now = time.time()
        # sortable by start time; unique also for runs started in the same process and second (sweeps)
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + f".{int(now % 1 * 1e6):06d}-{os.getpid()}"
        directory = f"{root}/{RUNS_DIR}/{stamp}"
        n = 0
        while fs.exists(directory):
            n += 1
            directory = f"{root}/{RUNS_DIR}/{stamp}-{n}"
        fs.makedirs(directory, exist_ok=True)
        fs.pipe_file(f"{directory}/config.yaml", to_yaml(config).encode())
        fs.pipe_file(f"{directory}/version.json", json.dumps(code_version(), indent=2).encode())
        if ray:
            fs.pipe_file(f"{directory}/ray.json", json.dumps(ray, indent=2, default=str).encode())
        return cls(directory)

    def event(self, kind: str, **fields: Any) -> None:
        """Append one event (a node lost or joined, ...) to the run's ``events.jsonl``, with its time."""
        from pipeline.io.shards import filesystem

        fs, _ = filesystem(self.directory)
        path = f"{self.directory}/events.jsonl"
        line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "event": kind, **fields}, default=str)
        before = fs.cat_file(path) if fs.exists(path) else b""  # object stores have no append
        fs.pipe_file(path, before + line.encode() + b"\n")

    def finish(self, summary: dict[str, Any]) -> None:
        from pipeline.io.shards import filesystem

        fs, _ = filesystem(self.directory)
        fs.pipe_file(f"{self.directory}/summary.json", json.dumps(summary, indent=2).encode())
