"""`latent serve index.path=DIR`: the HTTP API and the web page on uvicorn, bound to loopback by default."""

from __future__ import annotations

import contextlib
import logging
import re
from typing import TYPE_CHECKING

from pipeline.config import ServeConfig
from pipeline.errors import LatentError
from pipeline.search.limits import MAX_K
from pipeline.serve.auth import check_origins, load_token
from pipeline.serve.net import bind, is_loopback

if TYPE_CHECKING:
    from pipeline.search import Searcher

log = logging.getLogger(__name__)


def _check(cfg: ServeConfig) -> None:
    if not 0 <= cfg.port <= 65535:
        raise LatentError(f"port={cfg.port}: must be in 0..65535")
    for key in (
        "max_k",
        "default_k",
        "max_batch",
        "max_body_bytes",
        "thumbnail_size",
        "max_query_pixels",
        "max_decodes",
        "max_threads",
    ):
        if getattr(cfg, key) <= 0:
            raise LatentError(f"{key}={getattr(cfg, key)}: must be positive")
    if cfg.max_k > MAX_K:
        raise LatentError(f"max_k={cfg.max_k}: at most {MAX_K} hits per query (MAX_K in pipeline/search/limits.py)")
    if cfg.default_k > cfg.max_k:
        raise LatentError(f"default_k={cfg.default_k} is above max_k={cfg.max_k}")
    load_token(cfg.auth.token, cfg.auth.token_file)  # bad auth/CORS settings fail before the index is opened
    check_origins(cfg.cors.origins)
    if cfg.decode_retry_after_s < 0:
        raise LatentError(f"decode_retry_after_s={cfg.decode_retry_after_s}: must be >= 0")
    if cfg.search_threads < 0:
        raise LatentError(f"search_threads={cfg.search_threads}: must be >= 0 (0: every core but one)")
    if cfg.batch_wait_ms < 0:
        raise LatentError(f"batch_wait_ms={cfg.batch_wait_ms}: must be >= 0")


def open_searcher(cfg: ServeConfig) -> Searcher:
    """The Searcher of ``index.path``; an index that is missing, incomplete or corrupted is a LatentError.

    Searcher.open names what it checks (LatentError); what FAISS, Arrow or the JSON reader raise on a
    damaged file is turned into one too, so the user reads which index failed and what to do, not a traceback.
    """
    from pipeline.search import Searcher

    try:
        return Searcher.open(cfg.index.path, cfg.model)
    except LatentError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError, TypeError, IndexError) as err:  # FAISS: RuntimeError
        reason = re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", str(err).strip())  # FAISS's C++ location
        raise LatentError(
            f"cannot open the index at {cfg.index.path}: {type(err).__name__}: {reason} "
            "(damaged or incomplete: rebuild it with `latent index`)"
        ) from None


def run_serve(cfg: ServeConfig) -> None:
    """Open the index, build the app, serve until interrupted."""
    import uvicorn

    from pipeline.serve.app import create_app

    _check(cfg)
    if cfg.backend.value == "ray":
        from pipeline.serve.ray_app import run_ray_serve

        run_ray_serve(cfg)
        return
    searcher = open_searcher(cfg)
    app = create_app(searcher, cfg)
    sock = bind(cfg.host, cfg.port)
    host, port = sock.getsockname()[:2]
    authenticated = bool(cfg.auth.token or cfg.auth.token_file)
    if not is_loopback(cfg.host) and not authenticated:
        log.warning("listening on %s: reachable from other machines, and no auth.token is set", cfg.host)
    shown = f"[{host}]" if ":" in host else host
    auth = " (bearer token required)" if authenticated else ""
    print(
        f"latent serve: {cfg.index.path} ({searcher.ntotal:,} items, {searcher.dim}-d) on http://{shown}:{port}/{auth}"
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level=cfg.log_level, access_log=cfg.access_log))
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn shuts down gracefully, then re-raises the signal
        server.run(sockets=[sock])
    print("latent serve: stopped")
