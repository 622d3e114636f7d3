"""`latent serve backend=ray`: the HTTP host and port the application will really answer on.

Ray Serve's HTTP options are cluster-scoped: the first ``serve.start`` on a cluster fixes the proxies' host and
port until ``serve shutdown``. A later ``serve.start`` with another port only logs "The new HTTP config is
ignored" and the application then answers on the first port, while `latent serve` printed the new one, where
nothing answers (a restart with another ``port`` against a long-lived cluster). The port is settled here, before
anything is deployed.
"""

from __future__ import annotations

from pipeline.config import ServeConfig
from pipeline.errors import LatentError


def running_http() -> tuple[str, int] | None:
    """(host, port) of the Ray Serve already running on the connected cluster; None when Serve is not running."""
    from ray.serve import context

    # The controller's HTTP config, as serve.start reads it to compare a new one (Ray has no public getter;
    # serve.status() names the proxies but not their port).
    client = context._get_global_client(raise_if_no_controller_running=False)
    if client is None:
        return None
    return str(client.http_config.host), int(client.http_config.port)


def settle_http_port(cfg: ServeConfig) -> None:
    """Set ``cfg.port`` to the port the application will answer on, or refuse (LatentError) a ``host``/``port``
    that the cluster's running Serve does not listen on.

    An explicit port that differs is refused rather than silently moved: the user named that port (a client, a
    proxy or a firewall rule waits on it), and Serve cannot move without stopping every application it serves,
    so only the user may choose between the running port and a `serve shutdown`. ``port=0`` asks for any port:
    the running one is that, and it is the port printed. Without a running Serve, ``port=0`` takes a free port
    now (the proxy needs a fixed one)."""
    running = running_http()
    if running is None:
        if cfg.port == 0:
            from pipeline.serve.net import bind

            with bind(cfg.host, 0) as sock:
                cfg.port = sock.getsockname()[1]
        return
    host, port = running
    if host == cfg.host and cfg.port in (0, port):
        cfg.port = port
        return
    keys = f"port={port}" if host == cfg.host else f"host={host} port={port}"
    raise LatentError(
        f"backend=ray: Ray Serve already runs on this cluster at http://{host}:{port}/ and keeps that address "
        f"until it is shut down, so host={cfg.host} port={cfg.port} would not answer; use {keys}, or stop Serve "
        f"first with `serve shutdown` (this stops every application it serves)"
    )
