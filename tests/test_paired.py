"""t2cli/eval/paired.py: gains, losses and the exact McNemar p of two settings scored on the same items."""

from __future__ import annotations

import pytest

from t2cli.eval.paired import Paired, mcnemar_exact, paired


@pytest.mark.parametrize(
    ("gains", "losses", "p"),
    [
        (31, 16, 0.040),  # docs/ask.md: arc-v1 against base on ARC-Challenge
        (7, 3, 0.34),
        (22, 11, 0.080),
        (5, 3, 0.73),
    ],
)
def test_mcnemar_matches_the_published_values(gains: int, losses: int, p: float) -> None:
    assert mcnemar_exact(gains, losses) == pytest.approx(p, abs=0.005)


def test_mcnemar_by_hand_on_tiny_counts() -> None:
    assert mcnemar_exact(0, 0) == 1.0  # no discordant pair: no evidence
    assert mcnemar_exact(1, 0) == 1.0  # 2 * 1/2, capped
    assert mcnemar_exact(3, 0) == 0.25  # 2 * (1/2)^3
    assert mcnemar_exact(6, 0) == 0.03125  # 2 * (1/2)^6
    assert mcnemar_exact(4, 1) == 0.375  # 2 * (C(5,0) + C(5,1)) / 2^5
    assert mcnemar_exact(5, 1) == pytest.approx(2 * 7 / 64)
    assert mcnemar_exact(11, 10) == 1.0
    with pytest.raises(ValueError, match=">= 0"):
        mcnemar_exact(-1, 2)


def test_mcnemar_is_symmetric_and_stays_finite_for_many_pairs() -> None:
    for gains, losses in [(31, 16), (4, 1), (0, 7), (200, 180)]:
        assert mcnemar_exact(gains, losses) == mcnemar_exact(losses, gains)
    assert 0.0 < mcnemar_exact(600, 500) < 0.01  # 2^1100 would overflow a float: exact integers do not


def test_paired_counts_only_discordant_items_in_the_direction_asked() -> None:
    new = [True, False, True, True, True, False]
    old = [True, True, False, False, True, False]
    assert paired(new, old) == Paired(n=6, gains=2, losses=1, p=mcnemar_exact(2, 1))
    assert paired(old, new) == Paired(n=6, gains=1, losses=2, p=mcnemar_exact(1, 2))
    assert paired(new, new) == Paired(6, 0, 0, 1.0)
    assert paired(new, old).delta == pytest.approx(1 / 6)


def test_paired_refuses_results_of_other_items() -> None:
    with pytest.raises(ValueError, match="same items"):
        paired([True, False], [True])
