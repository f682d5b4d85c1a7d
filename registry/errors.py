"""Errors the registry raises; each carries what went wrong and, where there is one, the fix.

The CLI prints ``error: <message>`` and ``hint: <hint>``, so a message names the
value and the cause ("cannot write to T2_HOME /x (Read-only file system)") and the
hint says what to do next.
"""

from __future__ import annotations

import errno
from pathlib import Path


class T2Error(Exception):
    """Base class of every error a user can cause or fix, in the registry and in the engine.

    It lives here, in the lowest layer, so that both share one base; ``t2cli.errors``
    re-exports it. The CLI prints ``error: <message>`` / ``hint: <hint>`` and exits with
    ``exit_code``.
    """

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}: {self.hint}"


class RegistryError(T2Error):
    """Base class of every error the registry raises on purpose."""


class ExpertNotFound(T2Error):
    """An expert name that is not in the registry (``t2cli.errors`` re-exports it)."""


class RouterNotFound(T2Error):
    """A router name that is not in the registry."""


class NameTaken(RegistryError):
    """A name that another row already holds (an expert's name is unique)."""


class StoreUnavailable(RegistryError):
    """The home, the database or the blob directory cannot be created, opened or written."""


class BlobMissing(RegistryError):
    """A blob the registry refers to has no file in the blob store."""


class BlobCorrupt(RegistryError):
    """A blob file whose content no longer hashes to its name."""


class SchemaTooNew(RegistryError):
    """The database was migrated by a newer t2 than this one."""


def store_unavailable(action: str, path: Path, exc: OSError) -> StoreUnavailable:
    """Turn an ``OSError`` met while ``action``-ing ``path`` into a one-line ``StoreUnavailable``.

    ``action`` reads as a verb phrase: "create T2_HOME", "write to the blob store".
    """
    cause = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        hint = "free some disk space, or set T2_HOME to a directory on a disk with room"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        hint = f"check the permissions of {path}, or set T2_HOME to a writable directory"
    elif exc.errno == errno.ENOTDIR:
        hint = f"a parent of {path} is a file, not a directory: set T2_HOME to a directory path"
    else:
        hint = "set T2_HOME to a writable directory"
    return StoreUnavailable(f"cannot {action} {path} ({cause})", hint)
