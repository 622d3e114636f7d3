"""A real two-node Ray cluster on loopback, started with `ray start` like a user's cluster.

The head and the worker are separate `ray start` processes (their own raylet, object store, custom
resource label and Ray temp dir, as separate machines would have); every port is picked free so that
other Ray instances on the machine never collide. Each node needs its own temp dir: a node's
runtime-env agent unpacks the job's working_dir under ``<temp dir>/<session>/runtime_resources``
with ``overwrite=True`` (Ray 2.60, ``working_dir.py`` ``create`` -> ``packaging.py``
``download_and_unpack_package`` removes the directory first), so with one shared temp dir a node
that joins mid-job deleted the directory that the other node's workers run in (their cwd).
``kill_worker`` SIGKILLs the worker's raylet and its children, which is how a node dies;
``drain_worker`` SIGTERMs a worker started as `ray start --block`, which is how a preempted node
leaves; ``stop`` tears everything down and never raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

RAY = str(Path(sys.executable).with_name("ray"))
LOOPBACK = "127.0.0.1"
HEAD_LABEL = "latent_head"  # a custom resource only the head node has
WORKER_LABEL = "latent_worker"  # a custom resource only the worker node has
START_TIMEOUT = 90


def free_ports(n: int) -> list[int]:
    """``n`` distinct ports free on loopback now."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def short_temp_dir() -> str:
    """A fresh Ray temp dir; Ray's socket paths live under it and must stay short (AF_UNIX: 107 bytes)."""
    return tempfile.mkdtemp(prefix="lc", dir="/tmp")


def cluster_env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
        # a dead node is declared dead within ~3 s instead of ~30 s
        "RAY_health_check_period_ms": "1000",
        "RAY_health_check_timeout_ms": "1000",
        "RAY_health_check_failure_threshold": "3",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")) if p
        ),
    }


@dataclass
class Node:
    node_manager_port: int
    resources: dict[str, float]
    num_cpus: int
    temp_dir: str
    node_id: str | None = None
    blocking: subprocess.Popen | None = None  # its `ray start --block`, when it runs as one
    log: Path | None = None  # that process's output

    def raylet(self) -> psutil.Process | None:
        flag = f"--node_manager_port={self.node_manager_port}"
        for proc in psutil.process_iter(["cmdline"]):
            cmd = proc.info["cmdline"] or []
            if cmd and cmd[0].endswith("raylet") and flag in cmd:
                return proc
        return None


@dataclass
class LocalCluster:
    temp_dir: str
    gcs_port: int
    dashboard_port: int
    nodes: dict[str, Node] = field(default_factory=dict)
    logs: list[str] = field(default_factory=list)
    temp_dirs: list[str] = field(default_factory=list)  # every node's, the replaced ones' too

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOOPBACK}:{self.dashboard_port}"

    @classmethod
    def start(cls, head_cpus: int = 2, worker_cpus: int | None = 2) -> LocalCluster:
        """A head with ``head_cpus`` and, unless ``worker_cpus`` is None, one worker node with ``worker_cpus``."""
        gcs, dashboard = free_ports(2)
        cluster = cls(short_temp_dir(), gcs, dashboard)
        try:
            cluster._start_node("head", head_cpus, {HEAD_LABEL: 1.0})
            if worker_cpus is not None:
                cluster.add_worker(worker_cpus)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_node(self, name: str, cpus: int, resources: dict[str, float], drain_s: float | None = None) -> Node:
        """``drain_s``: the node runs as `ray start --block` (as in a Kubernetes pod or a VM's service),
        whose SIGTERM drains the node for up to ``drain_s`` seconds before it stops (``drain_worker``)."""
        nm, om, agent, agent_grpc, metrics, runtime_env = free_ports(6)
        temp_dir = self.temp_dir if name == "head" else short_temp_dir()
        args = [
            RAY,
            "start",
            f"--node-ip-address={LOOPBACK}",
            f"--num-cpus={cpus}",
            "--num-gpus=0",
            f"--resources={json.dumps(resources)}",
            f"--node-manager-port={nm}",
            f"--object-manager-port={om}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--temp-dir={temp_dir}",
            # workers bind OS-chosen ports: two raylets on one IP handing out the same default range collide
            "--min-worker-port=0",
            "--max-worker-port=0",
            "--object-store-memory=300000000",
            "--disable-usage-stats",
        ]
        if name == "head":
            args += [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=true",  # the Jobs API is served by the dashboard
                f"--dashboard-host={LOOPBACK}",
                f"--dashboard-port={self.dashboard_port}",
            ]
        else:
            args += [f"--address={self.address}"]
        node = Node(nm, resources, cpus, temp_dir)
        self.temp_dirs.append(temp_dir)
        if drain_s is None:
            done = subprocess.run(args, env=cluster_env(), capture_output=True, text=True, timeout=START_TIMEOUT)
            self.logs.append(done.stdout + done.stderr)
            if done.returncode != 0:
                raise RuntimeError(f"ray start ({name}) failed:\n{done.stdout}\n{done.stderr}")
        else:
            env = {**cluster_env(), "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(drain_s)}
            node.log = Path(temp_dir) / "ray-start-block.log"
            with node.log.open("w") as log:
                node.blocking = subprocess.Popen([*args, "--block"], env=env, stdout=log, stderr=subprocess.STDOUT)
        self.nodes[name] = node
        self._wait_for(node)
        return node

    def add_worker(self, cpus: int = 2, drain_s: float | None = None) -> Node:
        return self._start_node("worker", cpus, {WORKER_LABEL: 4.0}, drain_s)

    def drain_worker(self) -> Node:
        """SIGTERM the worker's `ray start --block`, as a spot preemption notice does: Ray 2.60 marks the node
        draining (reason PREEMPTION, deadline ``drain_s`` away), so no new work goes there, and stops the node
        when it is idle or at the deadline. Returns the node; its ``blocking`` process ends after the drain."""
        node = self.nodes["worker"]
        if node.blocking is None:
            raise RuntimeError("the worker was not started with drain_s (ray start --block)")
        node.blocking.send_signal(signal.SIGTERM)
        return node

    def _wait_for(self, node: Node) -> None:
        """Until the GCS lists ``node`` alive; records its node id."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            for info in self.alive_nodes():
                if info["NodeManagerPort"] == node.node_manager_port:
                    node.node_id = info["NodeID"]
                    return
            time.sleep(0.5)
        raise TimeoutError(f"node on port {node.node_manager_port} did not join the cluster")

    def alive_nodes(self) -> list[dict]:
        code = (
            f"import json, ray; ray.init(address='{self.address}', logging_level='ERROR', log_to_driver=False); "
            "print(json.dumps([n for n in ray.nodes() if n['Alive']]))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], env=cluster_env(), capture_output=True, text=True, timeout=60, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    def kill_worker(self) -> None:
        """SIGKILL the worker node's raylet and everything it started: the node dies at once."""
        raylet = self.nodes["worker"].raylet()
        if raylet is None:
            raise RuntimeError("the worker node's raylet is not running")
        victims = [raylet, *raylet.children(recursive=True)]
        for proc in victims:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.send_signal(signal.SIGKILL)
        psutil.wait_procs(victims, timeout=10)

    def processes(self) -> list[psutil.Process]:
        """This cluster's processes (and no other Ray's): those naming its temp dir or ports, and their children."""
        marks = [*self.temp_dirs, self.temp_dir, f"--gcs_server_port={self.gcs_port}", f"--gcs-address={self.address}"]
        marks += [f"--node_manager_port={n.node_manager_port}" for n in self.nodes.values()]
        found: dict[int, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            cmd = " ".join(proc.info["cmdline"] or [])
            # Ray gives the GCS the machine's address, not loopback: the client server names it that way
            gcs_named = re.search(rf"--address=\S+:{self.gcs_port}(\s|$)", cmd)
            if proc.pid != os.getpid() and (any(m in cmd for m in marks) or gcs_named):
                found[proc.pid] = proc
                with contextlib.suppress(psutil.Error):
                    found.update((c.pid, c) for c in proc.children(recursive=True))
        found.pop(os.getpid(), None)
        return list(found.values())

    def stop(self) -> None:
        """Stop every process of this cluster, by pid; never raises (teardown runs after failures too).

        Not `ray stop`: it kills every Ray process on the machine, other users' included."""
        for sig in (signal.SIGTERM, signal.SIGKILL):
            procs = self.processes()
            for proc in procs:
                with contextlib.suppress(psutil.Error):
                    proc.send_signal(sig)
            psutil.wait_procs(procs, timeout=5)
        for temp_dir in {self.temp_dir, *self.temp_dirs}:
            shutil.rmtree(temp_dir, ignore_errors=True)
