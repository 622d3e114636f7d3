"""The one exception type a user is meant to read: a clear message, no stack trace."""


class LatentError(Exception):
    """A problem with the user's input, config or environment, phrased as what to do about it."""

    exit_code = 2
