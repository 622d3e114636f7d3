"""`latent serve`: the HTTP API (FastAPI on uvicorn) and the web page over a Searcher (docs/http-api.md)."""

from pipeline.serve.app import create_app

__all__ = ["create_app"]
