"""Tags on experts: free-form labels (``t2 experts tag``), shown by ``t2 experts show``."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from registry.queries.tags import change_expert_tags, expert_names
from t2cli.errors import UsageError
from t2cli.svf.names import expert_not_found

if TYPE_CHECKING:
    from registry import Registry
    from registry.queries.tags import ExpertTags

TAG_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")


def check_tag(tag: str) -> str:
    """A tag is one word: letters, digits and ``. _ : + -``, starting with a letter or digit, at most 64 characters."""
    if not TAG_PATTERN.match(tag):
        raise UsageError(
            f"invalid tag {tag[:80]!r}",
            "use letters, digits and . _ : + - (no spaces), starting with a letter or digit; e.g. reviewed",
        )
    return tag


def tag_expert(registry: Registry, name: str, tags: Sequence[str], *, remove: bool = False) -> ExpertTags:
    """Add ``tags`` to expert ``name`` (or remove them); its tags afterwards. ``ExpertNotFound`` for an unknown name."""
    if not tags:
        raise UsageError("name at least one tag", f"e.g. t2 experts tag {name} reviewed")
    checked = [check_tag(t) for t in tags]
    with registry.session() as session:
        result = change_expert_tags(session, name, add=() if remove else checked, remove=checked if remove else ())
        if result is None:
            raise expert_not_found(name, expert_names(session))
    return result
