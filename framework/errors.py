"""The one error type users see for bad input.

A ConfigError names the offending field and, where there is a closed set, the allowed values.
The CLI prints it as one line and exits 2, with no traceback: raise it before any jax work.
"""

from __future__ import annotations

from collections.abc import Iterable


class ConfigError(ValueError):
    """Bad user input (config field, CLI flag, file, column, run directory)."""

    def __init__(self, field: str, message: str, allowed: Iterable[object] | None = None):
        self.field = field
        self.message = message
        self.allowed = list(allowed) if allowed is not None else None
        text = f"{field}: {message}"
        if self.allowed is not None:
            text += f" (allowed: {', '.join(str(a) for a in self.allowed)})"
        super().__init__(text)
