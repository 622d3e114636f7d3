"""The running job's watchdog: nodes lost, joined and draining; a pool that starves its readers; stalls.

A Ray Data actor pool restarts an actor lost with its node (Ray's ``max_restarts=-1``) wherever a CPU is
free, outside Ray Data's resource budget: on a two-node cluster of 2 CPUs, the lost encoder comes back on
the head beside the head's own, the two hold both CPUs, and the read tasks (and the re-reads of the blocks
lost with the node, which the actors' queued batches wait for) never get one: nothing moves, for ever.
The watchdog restarts the job's stages instead (``Watchdog.restart``; ``execute`` commits what came,
then plans the rest with a pool that fits beside a reader) when a node is lost and the live nodes cannot
hold the pool and a read task, and when rows stop while tasks wait for CPUs that the pool's actors hold.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections import Counter
from dataclasses import replace

from pipeline.errors import LatentError
from pipeline.runner.job import Job
from pipeline.runtime import RunRecord, draining_nodes, ray_started_here

log = logging.getLogger(__name__)

DRAIN_POLL_S = 1.0  # how often the driver looks for draining nodes: Ray Data releases their idle actors, so a
# drained node can leave within seconds of its notice
DRAINED_DEATHS = (3, 4)  # Ray's NodeDeathInfo.Reason AUTOSCALER_DRAIN_PREEMPTED, AUTOSCALER_DRAIN_IDLE (ray.nodes())
STARVED_S = 30.0  # no rows this long while the pool's actors hold the CPUs that waiting tasks need: restart
MAX_RESTARTS = 2  # restarts of the stages in a row without a row in between; then the job fails, saying why
POOL_ACTOR = "MapWorker("  # the class name Ray Data gives an actor pool's actors (Ray 2.60)
LIVE_POOL_STATES = ("ALIVE", "RESTARTING", "PENDING_CREATION", "DEPENDENCIES_UNREADY")
MANY = 1 << 30  # "unbounded" for a stage that asks for none of a resource


def live_nodes() -> list[dict]:
    """Alive nodes that are not draining (Ray places nothing new on a draining node), from Ray's node table."""
    import ray

    draining: set[str] = set()
    with contextlib.suppress(Exception):  # a private accessor: without it, draining nodes count as live
        draining = set(draining_nodes())
    return [n for n in ray.nodes() if n["Alive"] and n["NodeID"] not in draining]


def actors_that_fit(job: Job, nodes: list[dict]) -> int:
    """How many of the job's actors ``nodes`` (Ray's node table) hold beside one read task; 0: not one."""
    res, read = job.process.resources, job.read.cpus

    def fit(cpus: float, gpus: float) -> int:
        by_cpus = math.floor(cpus / res.cpus + 1e-9) if res.cpus else MANY
        by_gpus = math.floor(gpus / res.gpus + 1e-9) if res.gpus else MANY
        return max(0, min(by_cpus, by_gpus))

    sizes = [(n["Resources"].get("CPU", 0.0), n["Resources"].get("GPU", 0.0)) for n in nodes]
    each = [fit(c, g) for c, g in sizes]
    # the reader goes where it costs the fewest actors
    with_reader = [sum(each) - each[i] + fit(c - read, g) for i, (c, g) in enumerate(sizes) if c + 1e-9 >= read]
    return max(with_reader, default=0)


def fitted_pool(job: Job) -> Job:
    """``job`` with a pool that starts at what the live nodes hold beside a read task (at least one actor); its
    most is kept, so the pool grows back, within Ray Data's budget, as nodes join."""
    res = job.process.resources
    actors = max(1, min(res.actors, actors_that_fit(job, live_nodes())))
    if actors == res.actors:
        return job
    resources = replace(res, actors=actors, max_actors=res.most)
    return replace(job, process=replace(job.process, resources=resources))


def pool_actors() -> list[dict] | None:
    """This driver's actor-pool actors that hold or wait for resources (Ray's actor table); None: unknown."""
    import ray
    from ray._private.state import actors

    try:
        table = actors(job_id=ray.JobID.from_hex(ray.get_runtime_context().get_job_id()))
    except Exception:  # noqa: BLE001  (a private accessor: without it, the watchdog only looks at rows and nodes)
        return None
    return [a for a in table.values() if a["ActorClassName"].startswith(POOL_ACTOR) and a["State"] in LIVE_POOL_STATES]


def starved(job: Job) -> bool:
    """Whether tasks wait for CPUs while the pool's live actors leave no node a read task's CPUs: the reads,
    and the re-reads of blocks lost with a node, can never run, so neither can the batches that need them."""
    import ray
    from ray.autoscaler.v2.sdk import get_cluster_status

    pool = pool_actors()
    if not pool:
        return False
    held = Counter(a["Address"]["NodeID"] for a in pool if a["State"] == "ALIVE")
    res = job.process.resources
    if any(n["Resources"].get("CPU", 0.0) - held[n["NodeID"]] * res.cpus + 1e-9 >= job.read.cpus for n in live_nodes()):
        return False
    demand = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands.ray_task_actor_demand
    return any(b.bundle.get("CPU", 0) > 0 for d in demand for b in d.bundles_by_count)


def unmet_demand(job: Job, lost_node_hint: bool = True) -> str | None:
    """Why the cluster's live nodes cannot run the job's stages now (None when they can)."""
    nodes = [n["Resources"] for n in live_nodes()]
    cpus, gpus = sum(n.get("CPU", 0) for n in nodes), sum(n.get("GPU", 0) for n in nodes)
    res = job.process.resources
    # The pool is elastic (``plan._pool``) and restarted to fit (``Watchdog``): one actor and one read task go on.
    need_cpus = res.cpus + job.read.cpus
    problems = []
    if need_cpus > cpus:
        problems.append(
            f"{need_cpus:g} CPUs (at least 1 actor x {res.cpus:g} + {job.read.cpus:g} for reading), "
            f"the cluster has {cpus:g}"
        )
    if res.gpus > gpus:
        problems.append(f"{res.gpus:g} GPUs (at least 1 actor x {res.gpus:g}), the cluster has {gpus:g}")
    if nodes and not any(n.get("CPU", 0) >= res.cpus and n.get("GPU", 0) >= res.gpus for n in nodes):
        problems.append(f"no live node has {res.cpus:g} CPUs and {res.gpus:g} GPUs for one actor")
    if not problems:
        return None
    hint = "; was a node lost?" if lost_node_hint else ""
    return f"the stages need {'; '.join(problems)} ({len(nodes)} live nodes{hint})"


def check_schedulable(job: Job) -> None:
    """Refuse at once a job that the cluster can never run: a Ray started by this process does not grow.
    On a joined cluster an autoscaler may add nodes: say so and let the stall watchdog decide."""
    why = unmet_demand(job, lost_node_hint=False)
    if why is None:
        return
    remedy = f"give the stages fewer CPUs (e.g. resources.cpus_per_reader=0.5 {job.actor_cpus_key}=0.5)"
    if ray_started_here():
        raise LatentError(f"cannot run on this Ray: {why}. Start it with more CPUs (ray.num_cpus) or {remedy}")
    log.warning(
        "the cluster cannot run the stages yet (%s): waiting for nodes; the job fails after %.0f s without progress",
        why,
        job.stall_timeout_s,
    )


class Stalled(BaseException):
    """Raised in the job's thread by the watchdog. Not a KeyboardInterrupt: delivering it does not depend on
    the process's SIGINT handler (a server or a test runner may have replaced it), nor on the job running
    in the main thread; a BaseException, so no ``except Exception`` on the way swallows it."""


def _raise_in_thread(thread_id: int, exception: type[BaseException] | None) -> None:
    """Raise ``exception`` in the thread ``thread_id`` at its next Python instruction (Python's own
    ``PyThreadState_SetAsyncExc``); None withdraws one not yet raised."""
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None
    )


class Watchdog(threading.Thread):
    """Watches a running plan: logs and records nodes lost, joined and draining; asks for a restart of the
    stages (``restart``, read by the job's thread) when the pool starves its readers; stops the run
    (``Stalled`` in the thread that started it) when no row came for ``timeout`` seconds and the stages
    cannot be scheduled, or the stages stay starved after ``MAX_RESTARTS`` restarts."""

    def __init__(self, job: Job, record: RunRecord | None = None) -> None:
        super().__init__(daemon=True, name="latent-stall-watchdog")
        self.job, self.timeout, self.record = job, job.stall_timeout_s, record
        self.nodes: dict[str, float] | None = None  # live node id -> its CPUs, as last seen
        self.draining: set[str] = set()  # nodes seen draining
        self.job_thread = threading.get_ident()
        self.last_progress = time.monotonic()
        self.restart: str | None = None  # why the stages should restart; the job's thread clears it (``restarted``)
        self.restarts = 0  # in a row, without a row in between
        self.reason: str | None = None
        self.stopped = threading.Event()
        self._lock = threading.Lock()  # stop() and the raise exclude each other: nothing raised after stop()

    def progress(self) -> None:
        self.last_progress = time.monotonic()
        self.restarts = 0

    def restarted(self) -> None:
        """The job's thread restarted the stages: the new pool gets a fresh window to load and deliver."""
        self.restarts += 1
        self.restart = None
        self.last_progress = time.monotonic()

    def stop(self) -> None:
        with self._lock:
            self.stopped.set()
            if self.reason:  # raised but maybe not delivered yet (the job ended meanwhile): withdraw it
                _raise_in_thread(self.job_thread, None)

    def _fail(self, reason: str) -> None:
        with self._lock:
            if not self.stopped.is_set():
                self.reason = reason
                _raise_in_thread(self.job_thread, Stalled)

    def watch_nodes(self) -> None:
        """Say (and record in the run record) when the cluster loses or gains nodes. A lost node's record says
        whether it left drained (a preemption notice, ``ray drain-node``) and Ray's reason. A node lost (not
        drained) whose pool no longer fits the live nodes beside a reader restarts the stages."""
        import ray

        table = ray.nodes()
        now = {n["NodeID"]: n["Resources"].get("CPU", 0) for n in table if n["Alive"]}
        dead = {n["NodeID"]: n for n in table if not n["Alive"]}
        before, self.nodes = self.nodes, now
        if before is None:
            return
        for kind, ids in (("node_lost", before.keys() - now.keys()), ("node_joined", now.keys() - before.keys())):
            for node in ids:
                cpus = before.get(node, now.get(node))
                death = dead.get(node, {})
                # drained: seen draining, or Ray says so (a drain past its deadline ends like a SIGTERMed raylet)
                drained = kind == "node_lost" and (node in self.draining or death.get("DeathReason") in DRAINED_DEATHS)
                log.warning(
                    "%s: node %s (%g CPUs) %s; %s (%d live nodes)",
                    self.job.name,
                    node[:12],
                    cpus,
                    {"node_joined": "joined", "node_lost": "left after draining" if drained else "lost"}[kind],
                    "the actor pool may grow" if kind == "node_joined" else "rows in flight there are redone",
                    len(now),
                )
                if self.record is not None and kind == "node_lost":
                    reason = death.get("DeathReasonMessage") or None
                    self.record.event(kind, node=node, cpus=cpus, live_nodes=len(now), drained=drained, reason=reason)
                elif self.record is not None:
                    self.record.event(kind, node=node, cpus=cpus, live_nodes=len(now))
                if kind == "node_lost" and not drained:  # a drained node's actors were released, not restarted
                    self.check_pool_fits(node)

    def check_pool_fits(self, lost: str) -> None:
        """Ask for a restart when the pool's actors (as Ray restarts them) and a read task no longer fit."""
        pool = pool_actors()
        actors = len(pool) if pool is not None else self.job.process.resources.actors
        fit = actors_that_fit(self.job, live_nodes())
        if 0 < fit < actors and self.restart is None:
            self.restart = (
                f"node {lost[:12]} lost: the live nodes hold {fit} of the pool's {actors} actors beside a read task"
            )

    def watch_drains(self) -> None:
        """Say (and record) when a node starts draining (a preemption notice): Ray Data gives it no new
        batches, its batches in flight finish there, then it leaves (``node_lost``) when idle or at the
        deadline; what is still in flight then is redone."""
        for node, deadline_ms in draining_nodes().items():
            if node in self.draining:
                continue
            self.draining.add(node)
            left = round(deadline_ms / 1000 - time.time(), 1) if deadline_ms else None
            log.warning(
                "%s: node %s is draining (%s): it gets no new batches, its batches in flight finish there",
                self.job.name,
                node[:12],
                "no deadline" if left is None else f"leaves in {left:g} s at the latest",
            )
            if self.record is not None:
                cpus = (self.nodes or {}).get(node)
                self.record.event("node_draining", node=node, cpus=cpus, deadline_in_s=left)

    def check_starved(self, idle: float) -> None:
        """Rows stopped while tasks wait for CPUs that the pool's actors hold: restart, or fail after
        ``MAX_RESTARTS`` restarts in a row."""
        if self.restart is not None or not starved(self.job):
            return
        if actors_that_fit(self.job, live_nodes()) < 1:  # no smaller pool helps: the stall check says why
            return
        why = (
            f"no rows for {idle:.0f} s: tasks wait for CPUs, and the job's actors hold every live node's CPUs "
            f"(no room for a read task of {self.job.read.cpus:g} CPUs)"
        )
        if self.restarts < MAX_RESTARTS:
            self.restart = why
        else:
            self._fail(f"{why}, after restarting the stages {self.restarts} times")

    def run(self) -> None:
        warned = False
        every = min(5.0, max(0.5, self.timeout / 4))  # the node table and the stall check
        starved_after = min(STARVED_S, self.timeout)
        look_at = 0.0
        while not self.stopped.wait(min(DRAIN_POLL_S, every)):
            with contextlib.suppress(Exception):  # Ray going away under us: the job's thread reports it
                self.watch_drains()
            if time.monotonic() < look_at:
                continue
            look_at = time.monotonic() + every
            with contextlib.suppress(Exception):
                self.watch_nodes()
            idle = time.monotonic() - self.last_progress
            if idle >= starved_after:
                with contextlib.suppress(Exception):
                    self.check_starved(idle)
                if self.reason:
                    return
            if idle < self.timeout:
                warned = False
                continue
            try:
                why = unmet_demand(self.job)
            except Exception:  # noqa: BLE001  (Ray going away under us: the job's thread reports it; look again)
                continue
            if why:
                self._fail(f"no progress for {idle:.0f} s and nothing can be scheduled: {why}")
                return
            if not warned:
                log.warning("no rows for %.0f s; the stages are scheduled and still working", idle)
                warned = True
