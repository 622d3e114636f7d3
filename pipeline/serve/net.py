"""The listening socket of `latent serve`, shared by the one-process server and the Ray Serve backend."""

from __future__ import annotations

import ipaddress
import socket

from pipeline.errors import LatentError


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port), or a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP (not 0): asyncio sets TCP_NODELAY on accepted connections only for such sockets, and
    # without it Nagle's algorithm holds a response's body behind its headers until the client's delayed ACK
    # (40 ms on Linux, per request on a keep-alive connection)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise LatentError(f"cannot listen on {host}:{port}: {err.strerror} (set host=/port=)") from err
    sock.listen(2048)
    return sock
