"""`latent serve` hashes every file of its index directory in the background after it starts.

Opening an index hashes only files up to 16 MiB (``IndexDirectory``: sizes of all); a larger file is read
in full here, in a thread, while the server answers. ``/healthz`` shows the progress; once a file does
not match its sha256 in index.json, every query is answered 503 naming the file (docs/http-api.md).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

from pipeline.index.store.integrity import IndexCorrupted, check_files

log = logging.getLogger(__name__)


class FileCheck:
    """The background check of one index directory's files (``files``: index.json's name -> bytes, sha256)."""

    def __init__(self, root: str | Path, files: dict[str, dict[str, Any]] | None) -> None:
        self.root = Path(root)
        self.files = dict(files or {})
        self.checked = 0
        self.error: str | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="latent-file-check", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        for name, want in self.files.items():
            try:
                check_files(self.root, {name: want}, [name], full=True)
            except (IndexCorrupted, OSError) as err:
                self.error = str(err)
                log.error("the index directory is damaged: %s", err)
                return
            self.checked += 1

    def raise_if_damaged(self) -> None:
        if self.error is not None:
            raise IndexCorrupted(self.error)

    def report(self) -> dict[str, Any]:
        """``{"state": "checking" | "ok" | "damaged" | "no checksums", "checked", "files", "error"}``."""
        if not self.files:
            state = "no checksums"  # an index written before checksums: `latent verify` checks its vectors
        elif self.error is not None:
            state = "damaged"
        else:
            state = "ok" if self.checked == len(self.files) else "checking"
        return {"state": state, "checked": self.checked, "files": len(self.files), "error": self.error}


class RefuseWhenDamaged:
    """ASGI middleware: 503 naming the damaged file for every request but the page, /healthz and /static/.

    A plain ASGI class, not ``@app.middleware("http")``: Starlette's BaseHTTPMiddleware runs each request in a
    task group with memory streams, a fifth of the event loop's time per vector query (docs/benchmarks.md)."""

    def __init__(self, app: Any, check: FileCheck) -> None:
        self.app = app
        self.check = check

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        damaged = scope["type"] == "http" and self.check.error is not None
        if damaged and path not in ("/", "/healthz") and "/static/" not in path:
            from fastapi.responses import JSONResponse

            await JSONResponse({"detail": self.check.error}, status_code=503)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def attach_file_check(app: Any, searcher: Any) -> FileCheck:
    """Check ``searcher``'s index files in the background (``start()`` it when serving starts); while a file is
    damaged, queries get 503 naming it, as does an IndexCorrupted met by a search (a damaged stored vector)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    directory = getattr(searcher, "directory", None)
    check = FileCheck(directory.path, directory.info.files) if directory is not None else FileCheck(".", None)

    app.add_middleware(RefuseWhenDamaged, check=check)

    @app.exception_handler(IndexCorrupted)
    async def damaged(request: Request, err: IndexCorrupted) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=503)

    return check
