"""bench/skill_transfer.py: its arithmetic variants are what they say, and none is an `addition` question."""

from __future__ import annotations

import re

import pytest

from bench import skill_transfer
from t2cli.tasks import get_task

PATTERN = re.compile(r"What is ([\d +-]+)\? Answer with the number only\.")


@pytest.mark.parametrize("variant", skill_transfer.VARIANTS)
def test_variants_are_distinct_correct_and_never_an_addition_question(variant: str, tmp_path) -> None:
    lines = skill_transfer.variant_items(variant, 200, seed=0)
    assert len({line["prompt"] for line in lines}) == 200
    addition = {item.prompt for split in ("train", "valid", "test") for item in get_task("addition").split(split)}
    for line in lines:
        expression = PATTERN.fullmatch(line["prompt"]).group(1)
        assert int(line["answer"]) == eval(expression)  # safe: digits, spaces, + and - only (matched above)
        terms = [int(t) for t in re.findall(r"\d+", expression)]
        if variant == "sum3":
            assert len(terms) == 3 and all(10 <= t <= 99 for t in terms) and "-" not in expression
        elif variant == "add3digit":
            assert len(terms) == 2 and all(100 <= t <= 999 for t in terms) and "-" not in expression
        else:
            assert len(terms) == 2 and 10 <= terms[1] < terms[0] <= 99 and " - " in expression
        assert line["prompt"] not in addition
    assert skill_transfer.variant_items(variant, 200, seed=0) == lines  # seeded
    assert skill_transfer.variant_items(variant, 200, seed=1) != lines
    task = get_task(str(skill_transfer.write_variant(tmp_path, variant, 20, seed=0)))
    assert len(task.split("test")) == 20 and task.max_new_tokens == skill_transfer.MAX_NEW_TOKENS
