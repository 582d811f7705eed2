"""The errors recoup reports as one line (the CLI prints it and exits 2, with no traceback), each
saying what happened: bad input (`ConfigError`), a damaged checkpoint
(`framework.checkpoints.integrity.CorruptCheckpoint`), a save that could not be written
(`framework.checkpoints.store.SaveFailed`).

A ConfigError names the offending field and, where there is a closed set, the allowed values;
raise it before any jax work.
"""

from __future__ import annotations

from collections.abc import Iterable


class RecoupError(Exception):
    """Something recoup explains in one line: `field: message (allowed: ...)`."""

    def __init__(self, field: str, message: str, allowed: Iterable[object] | None = None):
        self.field = field
        self.message = message
        self.allowed = list(allowed) if allowed is not None else None
        text = f"{field}: {message}"
        if self.allowed is not None:
            text += f" (allowed: {', '.join(str(a) for a in self.allowed)})"
        super().__init__(text)


class ConfigError(RecoupError, ValueError):
    """Bad user input (config field, CLI flag, file, column, run directory)."""
