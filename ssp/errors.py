"""User-facing errors.

Anything raised as an :class:`SSPError` is printed by the CLI as one clear line
(no traceback) and exits non-zero. Data errors always name the file at fault.
"""

from __future__ import annotations

from pathlib import Path


class SSPError(Exception):
    """An error the user can act on; the message says what and where."""


class DataError(SSPError):
    """Bad input data. ``path`` is the file (or folder) at fault."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):
        # picklable with its real arguments: errors raised in pool workers must cross
        # the process boundary intact (the default would call __init__(message))
        return (type(self), (self.path, self.problem))
