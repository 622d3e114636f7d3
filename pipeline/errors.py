"""The one exception type a user is meant to read: a clear message, no stack trace."""

import re


class LatentError(Exception):
    """A problem with the user's input, config or environment, phrased as what to do about it."""

    exit_code = 2


class QueryError(LatentError):
    """A query the searcher cannot answer: wrong vector dimension, empty text, bytes that are not an image, a k
    outside 1..MAX_K."""


def check_format_version(data: dict, supported: int, what: str) -> None:
    """Refuse a file written by a newer latent (``what``: "index", "map", …), rather than misread it."""
    if data.get("format_version", 0) > supported:
        raise LatentError(
            f"{what} format version {data['format_version']} is newer than this latent understands "
            f"({supported}); upgrade latent"
        )


def describe_error(err: BaseException) -> str:
    """An exception as ``Type: message`` for error tables and messages, without Python object addresses
    (``<_io.BytesIO object at 0x…>``), which differ on every run and mean nothing to a user."""
    text = re.sub(r"\s*<[\w.]+ object at 0x[0-9a-fA-F]+>", "", str(err)).strip()
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror + (f": {err.filename}" if err.filename else "")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


class ServiceUnavailable(Exception):
    """A part of a distributed service (a shard, the query encoder) did not answer: HTTP 503, naming it.

    Not a LatentError: nothing is wrong with the request, and retrying it alone would not help."""
