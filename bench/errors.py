"""User-facing errors.

Every mistake a user can make (an unknown name, an invalid value, an unreachable
database) is raised as a :class:`BenchError` whose message is one self-contained
paragraph: what was wrong and what is allowed. The CLI prints it without a
traceback and exits with status 1.
"""

from __future__ import annotations

from collections.abc import Iterable


class BenchError(Exception):
    """An error caused by user input or the environment, with a readable message."""


class ConfigError(BenchError):
    """An invalid trial configuration or study specification."""


class UnknownNameError(ConfigError):
    """A name that is not registered; the message lists the valid names."""

    def __init__(self, kind: str, name: object, valid: Iterable[str], hint: str = ""):
        self.kind, self.name, self.valid = kind, name, sorted(valid)
        msg = f"Unknown {kind} {name!r}. Valid {kind} names: {', '.join(self.valid)}."
        if hint:
            msg += f" {hint}"
        super().__init__(msg)


class StoreError(BenchError):
    """The result store cannot be reached or refused an operation."""


class QueryError(BenchError):
    """A query outside the supported MongoDB filter subset."""
