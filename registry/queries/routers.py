"""Routers: register, look up, list by base model, remove."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.blobs import BlobInfo
from registry.errors import RouterNotFound
from registry.queries.naming import claim_name
from registry.records import NewRouter, RouterRecord, from_attributes, values_of
from registry.schema import BaseModel, Router

if TYPE_CHECKING:
    from registry.registry import Registry


def _record(session: Session, row: Router) -> RouterRecord:
    base = session.get(BaseModel, row.base_model_id)
    return from_attributes(
        RouterRecord,
        row,
        base_model_name=base.name if base is not None else "?",
        base_model_location=base.location if base is not None else "",
        config_json=row.config_json or "{}",
    )


def get(registry: Registry, name: str) -> RouterRecord | None:
    """The router called ``name``, if registered."""
    with registry.session(readonly=True) as session:
        row = session.scalars(select(Router).where(Router.name == name)).first()
        return None if row is None else _record(session, row)


def all_routers(registry: Registry) -> list[RouterRecord]:
    """Every router, oldest first."""
    with registry.session(readonly=True) as session:
        return [_record(session, row) for row in session.scalars(select(Router).order_by(Router.id))]


def latest_of_base_model(registry: Registry, base_model_id: int) -> RouterRecord | None:
    """The router of ``base_model_id`` registered last, if any."""
    with registry.session(readonly=True) as session:
        row = session.scalars(
            select(Router).where(Router.base_model_id == base_model_id).order_by(Router.id.desc())
        ).first()
        return None if row is None else _record(session, row)


def add(registry: Registry, router: NewRouter, blob: BlobInfo, *, replace: bool = False) -> int:
    """Insert a router row and its blob row in one transaction; returns the router id.

    ``NameTaken`` when the name is registered, unless ``replace`` (the old row goes).
    """
    with registry.session() as session:
        claim_name(session, Router, router.name, "a router", replace=replace)
        registry.add_blob(session, blob, "router")
        row = Router(**values_of(router), blob_sha256=blob.sha256)
        session.add(row)
        session.flush()
        return row.id


def remove(registry: Registry, name: str) -> None:
    """Delete a router's row (its blob stays until ``gc``); ``RouterNotFound`` when there is none."""
    with registry.session() as session:
        row = session.scalars(select(Router).where(Router.name == name)).first()
        if row is None:
            raise RouterNotFound(f"no router named {name!r}", "list them with `t2 router list`")
        session.delete(row)
