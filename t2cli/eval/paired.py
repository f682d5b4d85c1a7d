"""Paired comparison of two weight settings scored on the same items: gains, losses, exact McNemar p.

Two settings answered the same items; only the discordant items (right with one, wrong
with the other) carry information about which is better. Under "no difference" each
discordant item is a fair coin, so the two-sided p is an exact binomial tail, which stays
valid for the small counts a CPU evaluation gives (the chi-square version does not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from math import comb


@dataclass(frozen=True)
class Paired:
    """``new`` against ``old`` on the same items."""

    n: int
    gains: int  # right with new, wrong with old
    losses: int  # wrong with new, right with old
    p: float  # exact two-sided McNemar p

    @property
    def delta(self) -> float:
        """Accuracy difference new - old, as a fraction."""
        return (self.gains - self.losses) / self.n if self.n else 0.0


def mcnemar_exact(gains: int, losses: int) -> float:
    """Two-sided exact McNemar p: twice the smaller binomial(gains + losses, 1/2) tail, capped at 1."""
    if gains < 0 or losses < 0:
        raise ValueError(f"counts must be >= 0 (got {gains}, {losses})")
    n = gains + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, k) for k in range(min(gains, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired(new: Sequence[bool], old: Sequence[bool]) -> Paired:
    """Gains, losses and p of ``new`` over ``old`` (per-item correctness, same items in the same order)."""
    if len(new) != len(old):
        raise ValueError(f"paired results need the same items ({len(new)} vs {len(old)})")
    gains = sum(1 for a, b in zip(new, old) if a and not b)
    losses = sum(1 for a, b in zip(new, old) if b and not a)
    return Paired(len(new), gains, losses, mcnemar_exact(gains, losses))
