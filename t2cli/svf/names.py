"""The one rule for expert names, and the "did you mean" of a name that is not registered.

Torch-free, so the CLI checks ``--name`` before any work starts (a ``t2 train`` must not
run for 30 minutes and then refuse the name); ``register_expert`` checks it again.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from difflib import get_close_matches

from t2cli.errors import ExpertNotFound, UsageError

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
NAME_RULE = "use letters, digits, '.', '_' and '-', starting with a letter or digit, at most 128 characters"


class InvalidExpertName(UsageError):
    """An expert name that breaks the rule (it could not be exported, pushed or typed back)."""


def check_expert_name(name: object) -> str:
    """``name`` if it is a valid expert name; ``InvalidExpertName`` (exit code 2) otherwise.

    Valid: letters, digits, '.', '_' and '-', starting with a letter or digit, at most
    128 characters (so no spaces and no '/': the name is a folder name and a Hub file name).
    """
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise InvalidExpertName(f"invalid expert name {str(name)[:80]!r}", f"{NAME_RULE}; e.g. add-v1")
    return name


def did_you_mean(word: str, choices: Iterable[str]) -> str | None:
    """``did you mean 'add-v1'?`` for the closest of ``choices`` to ``word``; None when none is close."""
    close = get_close_matches(word, list(choices), n=1)
    return f"did you mean {close[0]!r}?" if close else None


def expert_not_found(name: str, known: list[str]) -> ExpertNotFound:
    """The error for an unregistered expert name, whose hint names the closest registered one."""
    hint = did_you_mean(name, known)
    if hint is None:
        hint = f"known experts: {', '.join(known[:10])}" if known else "none registered yet: train one with `t2 train`"
    return ExpertNotFound(f"no expert named {name!r}", hint)
