"""Ray Serve test helpers: deploy the latent application on the session's Ray, wait for it, tear it down."""

from __future__ import annotations

import socket
import time

import httpx

from pipeline.config import ServeConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deploy(cfg: ServeConfig, name: str, timeout_s: float = 180) -> str:
    """Deploy ``cfg``'s application as ``name`` at / (as `latent serve backend=ray` does); its base URL once it
    answers /healthz."""
    from ray import serve

    from pipeline.serve.ray_app import build_application, start_application

    start_application(cfg, build_application(cfg), name)
    url = f"http://127.0.0.1:{cfg.port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the Ray Serve application {name} did not answer within {timeout_s}s: {serve.status()}")
