"""Access control of the HTTP API: an optional bearer token and a CORS allow-list (docs/http-api.md).

Both are ASGI middlewares added by ``protect(app, token, origins)``, independent of the routes: any
ingress serving the app (uvicorn, Ray Serve) gets the same rules. With a token set, every request needs
``Authorization: Bearer TOKEN`` (compared in constant time) except ``/healthz`` (liveness probes) and
the pages' own files (``/``, ``/map``, ``/static/…``: no data, and a page must load to ask for the token).
The token never travels in a URL: URLs end up in logs, browser history and Referer headers.
"""

from __future__ import annotations

import hmac
import re
from pathlib import Path
from typing import Any

from starlette.middleware.cors import CORSMiddleware
from starlette.responses import JSONResponse

from pipeline.errors import LatentError

MIN_TOKEN_CHARS = 16
PUBLIC_PATHS = frozenset({"/healthz", "/", "/map"})  # the pages: no data, they ask for the token
PUBLIC_PREFIXES = ("/static/",)
ORIGIN = re.compile(r"^https?://[^/\s?#]+$")


def load_token(token: str | None, token_file: str | None) -> str | None:
    """The bearer token of ``auth.token`` or ``auth.token_file`` (None: no authentication)."""
    if token and token_file:
        raise LatentError("auth.token and auth.token_file are both set: set one of them")
    key = "auth.token"
    if token_file:
        key = "auth.token_file"
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise LatentError(f"auth.token_file={token_file}: cannot read it ({err})") from None
    if token is None:
        return None
    token = str(token)
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise LatentError(
            f"{key}: the token must be {MIN_TOKEN_CHARS}+ characters without spaces (e.g. `openssl rand -hex 32`)"
        )
    return token


def check_origins(origins: list[str]) -> list[str]:
    """The CORS allow-list as given, or a LatentError naming the first origin that is not scheme://host[:port]."""
    for origin in origins:
        if origin != "*" and not ORIGIN.match(origin):
            raise LatentError(f"cors.origins: {origin!r} is not an origin (scheme://host[:port], no path) or *")
    return list(origins)


class BearerToken:
    """ASGI middleware: 401 with WWW-Authenticate for a request without the token (public paths aside)."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or self._is_public(scope) or self._is_authorized(scope):
            await self.app(scope, receive, send)
            return
        given = self._bearer(scope) is not None
        challenge = 'Bearer realm="latent"' + (', error="invalid_token"' if given else "")
        detail = "wrong bearer token" if given else "this server needs a token: send Authorization: Bearer TOKEN"
        response = JSONResponse({"detail": detail}, status_code=401, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)

    @staticmethod
    def _is_public(scope: dict) -> bool:
        path, root = scope.get("path", ""), scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :] or "/"
        return scope.get("method") in ("GET", "HEAD") and (path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES))

    @staticmethod
    def _bearer(scope: dict) -> bytes | None:
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                return credentials.strip() if scheme.lower() == b"bearer" else b""
        return None

    def _is_authorized(self, scope: dict) -> bool:
        given = self._bearer(scope)
        return given is not None and hmac.compare_digest(given, self._token)


def protect(app: Any, token: str | None, origins: list[str]) -> None:
    """Add the token check (when ``token``) and, outside it, CORS (when ``origins``) to a Starlette app.

    CORS goes outermost: it answers preflight requests (browsers send them without credentials) and adds
    its headers to every answer, 401s included, so that a page on an allowed origin can read them.
    """
    if token:
        app.add_middleware(BearerToken, token=token)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
