"""Names that one row holds: experts and routers are registered by a unique name."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.errors import NameTaken


def claim_name(session: Session, table: Any, name: str, what: str, *, replace: bool) -> None:
    """Make ``name`` free in ``table`` (a mapped class with a ``name`` column) for a new row; ``what``: "an expert".

    ``NameTaken`` when a row holds it, unless ``replace``: that row is deleted (in the
    caller's transaction, so it comes back if the insert fails).
    """
    existing = session.scalars(select(table).where(table.name == name)).first()
    if existing is None:
        return
    if not replace:
        raise NameTaken(f"{what} named {name!r} already exists", "pick another --name or remove it")
    session.delete(existing)
    session.flush()
