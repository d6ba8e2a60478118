"""drug's settings read from the environment (thread counts): a malformed value is an error that
names the variable, never a traceback from int() somewhere inside the runtime."""

from __future__ import annotations

import os

from .errors import GraphError


def env_count(name: str, default: int, minimum: int = 0) -> int:
    """The whole number in environment variable `name`, raised to `minimum` if below it, or
    `default` when the variable is unset or empty.

    Raises:
        GraphError: The variable holds something other than a whole number.
    """
    configured = os.environ.get(name, "").strip()
    if not configured:
        return default
    try:
        value = int(configured)
    except ValueError:
        raise GraphError(f"{name} must be a whole number (at least {minimum}), got {configured!r}") from None
    return max(minimum, value)
