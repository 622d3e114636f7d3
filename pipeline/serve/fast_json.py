"""JSON on the query routes' hot path, parsed and written by pydantic-core (Rust) instead of the json module.

A 512-d vector query's body is ~11 KB of floats: ``json.loads`` took ~10x as long as ``pydantic_core.from_json``
on it, and FastAPI's response_model validation plus ``json.dumps`` ~4x as long as ``to_json`` of the same dict
(docs/benchmarks.md, "Service"). What the fast parser refuses (a lone surrogate escape, a BOM, nesting past
its limit, malformed JSON) goes to ``json.loads`` as before, so every body gets the answer it got before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic_core import from_json, to_json


def loads(body: bytes) -> Any:
    """``json.loads(body)``, the same value for every body it accepts, ~10x faster on a vector of floats."""
    try:
        return from_json(body)
    except ValueError:
        return json.loads(body)  # raises what FastAPI turns into a 422 (json_invalid), or parses what jiter refuses


class FastJSONRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


class FastJSONRoute(APIRoute):
    """A route whose JSON body FastAPI reads with ``loads``: its validation and 422s are FastAPI's own."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fast_json_handler(request: Request) -> Response:
            return await handler(FastJSONRequest(request.scope, request.receive))

        return fast_json_handler


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    """``content`` (plain dicts, lists, str, int, float, bool, None) as a JSON response; NaN and infinities as null,
    as ``json_safe`` makes them."""
    body = to_json(content, inf_nan_mode="null")
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")
