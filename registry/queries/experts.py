"""Experts: register, look up, list by base model or task, lineage, removal."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.blobs import BlobInfo
from registry.errors import ExpertNotFound, RegistryError
from registry.queries.naming import claim_name
from registry.records import ExpertRecord, NewExpert, ParentLink
from registry.schema import BaseModel, Expert, ExpertParent, ExpertTag

if TYPE_CHECKING:
    from registry.registry import Registry


def _targets(targets_json: str | None) -> tuple[str | None, tuple[str, ...]]:
    """(spec, matrix names) from ``targets_json``: ``{"spec", "matrices"}`` (or a bare list of names)."""
    data = json.loads(targets_json or "{}")
    if isinstance(data, list):
        return None, tuple(str(n) for n in data)
    return data.get("spec"), tuple(data.get("matrices") or ())


def _record(session: Session, row: Expert) -> ExpertRecord:
    base = session.get(BaseModel, row.base_model_id)
    spec, matrices = _targets(row.targets_json)
    return ExpertRecord(
        id=row.id,
        name=row.name,
        base_model_id=row.base_model_id,
        base_model_name=base.name if base is not None else "?",
        base_model_location=base.location if base is not None else "",
        decomposition_id=row.decomposition_id,
        kind=row.kind,
        task=row.task,
        category=row.category,
        description=row.description,
        targets_spec=spec,
        matrices=matrices,
        blob_sha256=row.blob_sha256,
        config_json=row.config_json or "{}",
        created_at=row.created_at,
    )


def get(registry: Registry, name: str) -> ExpertRecord | None:
    """The expert called ``name``, if registered."""
    with registry.session(readonly=True) as session:
        row = session.scalars(select(Expert).where(Expert.name == name)).first()
        return None if row is None else _record(session, row)


def exists(registry: Registry, name: str) -> bool:
    """Whether an expert called ``name`` is registered."""
    with registry.session(readonly=True) as session:
        return session.scalars(select(Expert.id).where(Expert.name == name)).first() is not None


def names(registry: Registry, *, limit: int | None = None) -> list[str]:
    """Expert names in alphabetical order (the first ``limit`` of them: for "known experts" hints)."""
    with registry.session(readonly=True) as session:
        return list(session.scalars(select(Expert.name).order_by(Expert.name).limit(limit)))


def names_starting_with(registry: Registry, stem: str) -> set[str]:
    """Names of experts that start with ``stem`` (``stem`` itself included)."""
    with registry.session(readonly=True) as session:
        taken = set(session.scalars(select(Expert.name).where(Expert.name.like(f"{stem}%"))))
    return {name for name in taken if name.startswith(stem)}


def all_experts(registry: Registry) -> list[ExpertRecord]:
    """Every expert, oldest first."""
    with registry.session(readonly=True) as session:
        return [_record(session, row) for row in session.scalars(select(Expert).order_by(Expert.id))]


def of_base_model(registry: Registry, base_model_id: int) -> list[ExpertRecord]:
    """The experts of a base model, oldest first."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(select(Expert).where(Expert.base_model_id == base_model_id).order_by(Expert.id))
        return [_record(session, row) for row in rows]


def of_fingerprint(registry: Registry, fingerprint: str) -> list[ExpertRecord]:
    """The experts of the base model whose weights have this fingerprint, oldest first."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(
            select(Expert)
            .join(BaseModel, Expert.base_model_id == BaseModel.id)
            .where(BaseModel.fingerprint == fingerprint)
            .order_by(Expert.id)
        )
        return [_record(session, row) for row in rows]


def latest_for_task(registry: Registry, base_model_id: int, task: str) -> str | None:
    """The name of the newest non-mixture expert of ``base_model_id`` trained on ``task``."""
    with registry.session(readonly=True) as session:
        return session.scalars(
            select(Expert.name)
            .where(Expert.base_model_id == base_model_id, Expert.task == task, Expert.kind != "mixture")
            .order_by(Expert.id.desc())
        ).first()


def mixtures_for_task(registry: Registry, base_model_id: int, task: str) -> list[ExpertRecord]:
    """The mixtures of ``base_model_id`` recorded for ``task``, newest first."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(
            select(Expert)
            .where(Expert.kind == "mixture", Expert.task == task, Expert.base_model_id == base_model_id)
            .order_by(Expert.id.desc())
        )
        return [_record(session, row) for row in rows]


def latest_of_kind(registry: Registry, kind: str) -> str | None:
    """The name of the newest expert of this kind ("trained", "mixture", ...), if any."""
    with registry.session(readonly=True) as session:
        return session.scalars(select(Expert.name).where(Expert.kind == kind).order_by(Expert.id.desc())).first()


def parents(registry: Registry, expert_id: int) -> list[ParentLink]:
    """The experts this one was made from, with weight and relation."""
    with registry.session(readonly=True) as session:
        links = session.scalars(select(ExpertParent).where(ExpertParent.expert_id == expert_id)).all()
        return [ParentLink(link.parent.name, link.weight, link.relation) for link in links]


def _children(session: Session, expert_id: int) -> list[str]:
    links = session.scalars(select(ExpertParent).where(ExpertParent.parent_id == expert_id)).all()
    return [link.expert.name for link in links]


def children(registry: Registry, expert_id: int) -> list[str]:
    """Names of the experts made from this one."""
    with registry.session(readonly=True) as session:
        return _children(session, expert_id)


def tags(registry: Registry, expert_id: int) -> list[str]:
    """The expert's tags, sorted."""
    with registry.session(readonly=True) as session:
        return list(
            session.scalars(select(ExpertTag.tag).where(ExpertTag.expert_id == expert_id).order_by(ExpertTag.tag))
        )


def add(registry: Registry, expert: NewExpert, blob: BlobInfo, *, replace: bool = False) -> int:
    """Insert an expert row, its blob row and its parent links in one transaction; returns the expert id.

    ``NameTaken`` when the name is registered (unless ``replace``: the old row goes);
    ``ExpertNotFound`` when a parent is not registered.
    """
    with registry.session() as session:
        claim_name(session, Expert, expert.name, "an expert", replace=replace)
        registry.add_blob(session, blob, "expert")
        row = Expert(
            name=expert.name,
            base_model_id=expert.base_model_id,
            decomposition_id=expert.decomposition_id,
            kind=expert.kind,
            task=expert.task,
            category=expert.category,
            description=expert.description,
            targets_json=json.dumps({"spec": expert.targets_spec, "matrices": list(expert.matrices)}),
            blob_sha256=blob.sha256,
            config_json=expert.config_json,
        )
        session.add(row)
        session.flush()
        for parent in expert.parents:
            parent_id = session.scalars(select(Expert.id).where(Expert.name == parent.name)).first()
            if parent_id is None:
                raise ExpertNotFound(f"parent expert {parent.name!r} is not registered")
            session.add(
                ExpertParent(expert_id=row.id, parent_id=parent_id, weight=parent.weight, relation=parent.relation)
            )
        return row.id


def remove(registry: Registry, name: str) -> None:
    """Delete an expert's rows (its blob stays until ``gc``).

    ``ExpertNotFound`` when there is no such expert; ``RegistryError`` while other experts
    derive from it (lineage must stay complete).
    """
    with registry.session() as session:
        row = session.scalars(select(Expert).where(Expert.name == name)).first()
        if row is None:
            raise ExpertNotFound(f"no expert named {name!r}")
        derived = _children(session, row.id)
        if derived:
            raise RegistryError(
                f"expert {name!r} is a parent of {', '.join(derived)}",
                "remove those experts first (lineage must stay complete)",
            )
        session.delete(row)
