"""Where t2 keeps its data: one home directory, overridable with ``T2_HOME``."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir

from registry import Registry

HOME_ENV = "T2_HOME"


def t2_home() -> Path:
    """The home directory: ``$T2_HOME`` if set, else the platform's user data dir for t2."""
    configured = os.environ.get(HOME_ENV)
    if configured:
        return Path(configured).expanduser().absolute()
    return Path(user_data_dir("t2", appauthor=False))


def open_registry(*, read_only: bool = False):  # -> registry.Registry (imported lazily: SQLAlchemy is slow)
    """Open (creating and migrating if needed) the registry under the home directory.

    ``read_only``: a handle that refuses write sessions (see ``Registry.open``).
    """
    return Registry.open(t2_home(), read_only=read_only)
