"""Expert tags: the writer of the ``expert_tags`` table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from registry.schema import Expert, ExpertTag


@dataclass(frozen=True)
class ExpertTags:
    """An expert's tags after a change, sorted, and what the change did."""

    expert: str
    tags: tuple[str, ...]
    added: tuple[str, ...]  # tags it did not have before
    removed: tuple[str, ...]  # tags it had and no longer has


def change_expert_tags(
    session: Session, expert_name: str, *, add: Sequence[str] = (), remove: Sequence[str] = ()
) -> ExpertTags | None:
    """Add ``add`` and remove ``remove`` from the tags of ``expert_name``; None when no expert has that name.

    Adding a tag the expert has, or removing one it lacks, changes nothing.
    """
    expert_id = session.scalars(select(Expert.id).where(Expert.name == expert_name)).first()
    if expert_id is None:
        return None
    before = set(session.scalars(select(ExpertTag.tag).where(ExpertTag.expert_id == expert_id)))
    added = sorted(set(add) - before)
    removed = sorted(set(remove) & before)
    for tag in added:
        session.add(ExpertTag(expert_id=expert_id, tag=tag))
    if removed:
        session.execute(delete(ExpertTag).where(ExpertTag.expert_id == expert_id, ExpertTag.tag.in_(removed)))
    session.flush()
    after = sorted((before | set(added)) - set(removed))
    return ExpertTags(expert=expert_name, tags=tuple(after), added=tuple(added), removed=tuple(removed))


def expert_names(session: Session) -> list[str]:
    """Every expert's name, sorted (the candidates of a "did you mean")."""
    return list(session.scalars(select(Expert.name).order_by(Expert.name)))
