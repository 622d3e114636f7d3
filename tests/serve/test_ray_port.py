"""`latent serve backend=ray` against a cluster whose Ray Serve already runs (issue 22): Serve keeps the HTTP port of
its first start until `serve shutdown`, so a second `latent serve ... port=<other>` used to deploy, answer on the
first port and print the other one, where nothing answered. Now it is refused at once, naming the running port;
``port=0`` (any port) takes the running one."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
import pytest
from index.helpers import build, dataset, vectors

from pipeline.errors import LatentError

from .conftest import serve_config
from .rayserve import deploy, free_port

pytestmark = pytest.mark.slow  # starts a second process (the CLI) against the session's Ray


@pytest.fixture(scope="module")
def one_shard(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-port")
    path = work / "idx"
    build(dataset(work / "emb", vectors(50), dtype="float32"), path, "index.factory=Flat")
    return path


def test_a_second_serve_on_another_port_is_refused_naming_the_port_serve_runs_on(local_ray, one_shard):
    from ray import serve

    from pipeline.serve.ray_app import APP_NAME, build_application, start_application
    from pipeline.serve.ray_port import settle_http_port

    first = serve_config(one_shard, "backend=ray", f"port={free_port()}", "replica_cpus=0.2")
    deploy(first, APP_NAME, timeout_s=240)
    serve.delete(APP_NAME)  # as an interrupted `latent serve` leaves the cluster: Serve still runs, on its port
    try:
        other = free_port()
        # the CLI as a user restarts it against the same long-lived cluster: one line, exit 2, nothing deployed
        # (before: it deployed, printed http://127.0.0.1:<other>/ and served on the first port)
        address = local_ray.get_runtime_context().gcs_address
        args = [f"index.path={one_shard}", "backend=ray", f"ray.address={address}", f"port={other}", "replica_cpus=0.2"]
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pipeline.cli", "serve", *args],
                capture_output=True, text=True, timeout=120, env={**os.environ, "RAY_AUTH_MODE": "disabled"},
            )  # fmt: skip
        except subprocess.TimeoutExpired as running:
            pytest.fail(f"`latent serve port={other}` was not refused; it printed: {running.stdout!r}")
        assert done.returncode == 2, done.stdout + done.stderr
        errors = [line for line in done.stderr.splitlines() if "Ray Serve already runs" in line]
        assert len(errors) == 1, done.stderr
        assert f"at http://127.0.0.1:{first.port}/" in errors[0] and f"use port={first.port}" in errors[0]
        assert "serve shutdown" in errors[0]
        assert f":{other}" not in done.stdout  # no URL printed where nothing answers
        assert serve.status().applications == {}

        # the library path refuses as well, before deploying
        second = serve_config(one_shard, "backend=ray", f"port={other}", "replica_cpus=0.2")
        with pytest.raises(LatentError, match=rf"at http://127\.0\.0\.1:{first.port}/ .*use port={first.port},"):
            start_application(second, build_application(second))
        # the proxies listen on one host: another host is refused too, naming both keys
        elsewhere = serve_config(one_shard, "backend=ray", "host=0.0.0.0", f"port={first.port}")
        with pytest.raises(LatentError, match=rf"use host=127\.0\.0\.1 port={first.port},"):
            settle_http_port(elsewhere)
        assert serve.status().applications == {}
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{other}/healthz", timeout=5)

        # port=0 asks for any port: it gets the one Serve listens on, and the application answers there
        anywhere = serve_config(one_shard, "backend=ray", "port=0", "replica_cpus=0.2")
        url = deploy(anywhere, APP_NAME, timeout_s=240)
        assert anywhere.port == first.port and url == f"http://127.0.0.1:{first.port}"
    finally:
        serve.shutdown()  # a Serve left running keeps its port for the next module's application
