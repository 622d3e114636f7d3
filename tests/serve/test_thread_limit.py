"""Issue 18 item 9: `latent serve` under an address-space limit (ulimit -v) answered 500 "can't start new
thread". A request that cannot get a thread is answered 503 + Retry-After with the reason; the server lives on."""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from .rayserve import free_port

REPO = Path(__file__).resolve().parents[2]


def vm_size(pid: int) -> int:
    return int(re.search(r"VmSize:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text()).group(1)) * 1024


@pytest.mark.slow
def test_requests_that_cannot_get_a_thread_get_503_with_a_reason(vector_index):
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "pipeline.cli", "serve", f"index.path={vector_index}", f"port={port}",
           "log_level=error", "max_threads=64"]  # fmt: skip
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read().decode()[-2000:]
            time.sleep(0.3)
        # ulimit -v just above what the server maps now: one more thread stack (8 MiB) fits, not many
        limit = vm_size(server.pid) + 12 * 2**20
        resource.prlimit(server.pid, resource.RLIMIT_AS, (limit, resource.RLIM_INFINITY))  # soft: undone below
        ids = [f"v{i}" for i in range(64)]

        def get(id: str) -> httpx.Response:
            return httpx.get(f"{url}/items/{id}", timeout=60)

        with ThreadPoolExecutor(48) as pool:
            answers = list(pool.map(get, ids * 2))
        codes = sorted({r.status_code for r in answers})
        assert 500 not in codes and set(codes) <= {200, 404, 503}, [r.text for r in answers if r.status_code >= 500][:2]
        refused = [r for r in answers if r.status_code == 503]
        assert refused, f"the limit did not bite (codes {codes}): the test proves nothing"
        assert refused[0].headers["retry-after"] == "1" and "could not start a thread" in refused[0].json()["detail"]
        resource.prlimit(server.pid, resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        assert httpx.get(f"{url}/items/v1", timeout=30).status_code in (200, 404)  # the server lives on
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
