"""The error hierarchy that the engine raises and the CLI turns into one line.

Every error carries what went wrong (the message) and, where there is one, what
to do next (``hint``). The CLI prints ``error: <message>`` and ``hint: <hint>``
and exits 1; a traceback is printed only with ``T2_DEBUG=1``.
"""

from __future__ import annotations

from registry.errors import ExpertNotFound, T2Error

__all__ = [
    "DecompositionError",
    "ExpertNotFound",
    "ModelLoadError",
    "ModelNotFound",
    "StorageError",
    "T2Error",
    "TargetError",
    "TargetValueError",
    "UsageError",
    "first_line",
]


class UsageError(T2Error):
    """Arguments that do not fit together or cannot be parsed."""

    exit_code = 2


class ModelNotFound(T2Error):
    """A model name that is neither an alias, a path, nor a reachable Hub id."""


class ModelLoadError(T2Error):
    """A model that exists but cannot be loaded (corrupt file, unsupported architecture)."""


class TargetError(T2Error):
    """A target selection that matches nothing or is not a valid pattern."""


class TargetValueError(TargetError, UsageError):
    """A --targets value that is not a valid pattern or matches no matrix of the model (exit code 2)."""


class DecompositionError(T2Error):
    """A decomposition that cannot be computed, stored or found."""


class StorageError(T2Error):
    """The home directory, the database or the blob store cannot be written or read."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type when it has none), cut to 300 characters."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
