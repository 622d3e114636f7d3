"""`latent serve` as a user runs it: the real CLI in a subprocess, on a free loopback port."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from pipeline.cli import main
from pipeline.serve.server import bind

TINY_CLI = Path(__file__).resolve().parents[1] / "tiny_cli.py"
REPO = Path(__file__).resolve().parents[2]


def _latent(*args: str, **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, str(TINY_CLI), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )


@pytest.mark.slow
def test_latent_serve_listens_on_loopback_answers_and_stops_on_sigint(photo_index):
    process = _latent("serve", f"index.path={photo_index}", "port=0", "model.device=cpu")
    try:
        lines = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if match := re.search(r"on http://(127\.0\.0\.1):(\d+)/", line):
                break
        assert match, "".join(lines)
        assert "6 items, 32-d" in line
        url = f"http://{match[1]}:{match[2]}"
        for _ in range(600):  # the socket is bound before uvicorn starts answering
            try:
                health = httpx.get(f"{url}/healthz", timeout=5).json()
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert health["ntotal"] == 6 and "text" in health["queries"]
        hits = httpx.post(f"{url}/search", json={"text": "a rocket", "k": 2}, timeout=30).json()["hits"]
        assert len(hits) == 2
    finally:
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    assert process.returncode == 0 and "latent serve: stopped" in out, out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["index.path=/nonexistent/index"], "is not an index directory"),
        (["index.path=INDEX", "port=70000"], "port=70000"),
        (["index.path=INDEX", "max_k=5", "default_k=10"], "default_k=10 is above max_k=5"),
        ([], "missing value for key 'index.path'"),
    ],
)
def test_bad_settings_exit_2_with_a_message(vector_index, capsys, args, message):
    with pytest.raises(SystemExit) as exit:
        main(["serve", *(a.replace("INDEX", str(vector_index)) for a in args)])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and message in err, err


def test_a_busy_port_is_a_clear_error(vector_index, capsys):
    sock = bind("127.0.0.1", 0)
    try:
        with pytest.raises(SystemExit) as exit:
            main(["serve", f"index.path={vector_index}", f"port={sock.getsockname()[1]}", "warmup=false"])
    finally:
        sock.close()
    err = capsys.readouterr().err
    assert exit.value.code == 2 and "cannot listen on 127.0.0.1" in err, err


def test_the_listening_socket_disables_nagle():
    """asyncio sets TCP_NODELAY on accepted connections of IPPROTO_TCP sockets only; without it each keep-alive
    response waited ~40 ms for the client's delayed ACK."""
    import socket

    sock = bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        sock.close()


def test_accepted_connections_disable_nagle():
    """What the latency depends on, checked directly: a connection accepted on the listening socket (by
    asyncio's create_server, as uvicorn does) has TCP_NODELAY, so no response waits for a delayed ACK."""
    import asyncio
    import socket

    sock = bind("127.0.0.1", 0)

    async def accept_one() -> int:
        accepted: asyncio.Future = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer) -> None:
            accepted.set_result(writer.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        try:
            return await asyncio.wait_for(accepted, 60)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()

    assert asyncio.run(accept_one())
