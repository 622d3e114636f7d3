"""`latent serve backend=ray`: how many CPUs each replica of the application reserves, sized to the cluster.

Ray Serve waits forever, logging "taken more than 30s to be scheduled", for a replica no node has room for
(issue 22: default keys, a 4-shard index, 2 CPUs). The share is chosen here, before anything is deployed.
"""

from __future__ import annotations

import logging

from pipeline.config import ServeConfig
from pipeline.errors import LatentError

log = logging.getLogger(__name__)

MIN_REPLICA_CPUS = 0.01  # the smallest share sized automatically (Ray schedules fractions of a CPU)


def placeable(node_cpus: list[float], share: float) -> int:
    """How many replicas of ``share`` CPUs nodes with ``node_cpus`` CPUs each hold (a replica lives on one node:
    3 one-CPU nodes hold 7 replicas of 3/7 CPU only 6 times)."""
    return sum(int(c / share + 1e-9) for c in node_cpus)


def share_that_fits(node_cpus: list[float], replicas: int) -> float:
    """The largest CPU share (a multiple of 0.01) at which ``replicas`` replicas can all be placed on nodes with
    ``node_cpus`` CPUs each; 0.0 when not even 0.01 each fits."""
    share = int(sum(node_cpus) / replicas * 100)  # in hundredths, rounded down
    while share > 0 and placeable(node_cpus, share / 100) < replicas:
        share -= 1
    return share / 100


def _node_cpus() -> list[float]:
    import ray

    return [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]


def replica_cpus_that_fit(cfg: ServeConfig, shard_count: int, encoder: bool) -> float:
    """The CPUs each replica reserves. ``replica_cpus`` given: that, or refused at once if the replicas cannot
    all be placed (Ray Serve would wait for resources forever), naming a value that fits. ``replica_cpus=null``
    (the default): 1 each when the cluster's nodes have room for that, else the largest equal share that
    fits, said in a log line; refused when even 0.01 CPU each does not fit. Without a running Ray there is
    nothing to size by."""
    import ray

    if not ray.is_initialized():
        return cfg.replica_cpus or 1.0
    nodes = _node_cpus()
    total = sum(nodes)
    replicas = shard_count * cfg.replicas + 1 + (cfg.encoder_replicas if encoder else 0)  # + the ingress
    parts = f"{shard_count} shard(s) x replicas={cfg.replicas} + 1 ingress"
    parts += f" + encoder_replicas={cfg.encoder_replicas}" if encoder else ""
    fits = min(1.0, share_that_fits(nodes, replicas))
    if cfg.replica_cpus is None:
        if fits == 1.0:
            return 1.0
        if fits >= MIN_REPLICA_CPUS:
            log.warning(
                "backend=ray: %d replicas (%s) on a cluster of %g CPUs: each reserves replica_cpus=%g "
                "(set replica_cpus= to choose, or join a larger cluster with ray.address=)",
                replicas, parts, total, fits,
            )  # fmt: skip
            return fits
        raise LatentError(
            f"backend=ray: {replicas} replicas ({parts}) do not fit on a cluster of {total:g} CPUs even at "
            f"{MIN_REPLICA_CPUS} CPU each; use fewer replicas or a larger cluster (ray.address=)"
        )
    if placeable(nodes, cfg.replica_cpus) >= replicas:
        return cfg.replica_cpus
    need = replicas * cfg.replica_cpus
    hint = f"set replica_cpus={fits} (or fewer replicas)" if fits > 0 else "use a larger cluster (ray.address=)"
    raise LatentError(
        f"backend=ray: {replicas} replicas ({parts}) x replica_cpus={cfg.replica_cpus} need {need:g} CPUs, "
        f"the cluster has {total:g}: Ray Serve would wait for them forever; {hint} (replica_cpus=null sizes it)"
    )
