"""The router's labelled prompts: which tasks teach a class, in what shares, and from which split."""

from __future__ import annotations

from collections import Counter

import pytest

from t2cli.router.data import class_tasks, question_only, router_prompts
from t2cli.tasks.dispatch_task import OTHER, CategoryExpert
from t2cli.tasks.lookup import get_task, list_tasks
from t2cli.tasks.types import TaskError

CODING = CategoryExpert("code", "bank-coding", "", "coding", "coding")
LOGIC = CategoryExpert("reasoning", "bank-logic", "", "logic", "logic")
# The reasoning tasks with training items: each gets a share of the class (possession-long has none).
REASONING = sorted(t.name for t in list_tasks() if t.category == "reasoning" and t.split("train"))


def _task_of(prompt: str, tasks: list[str], split: str) -> str:
    """The task whose ``split`` holds ``prompt`` (as written or cut to its question)."""
    owners = {
        t for t in tasks for item in get_task(t).split(split) if prompt in (item.prompt, question_only(item.prompt))
    }
    assert len(owners) == 1, (prompt, owners)
    return owners.pop()


def test_the_category_pool_is_the_experts_task_then_every_builtin_task_of_its_category() -> None:
    code_tasks = sorted(t.name for t in list_tasks() if t.category == "code")
    assert len(code_tasks) >= 3  # coding, humaneval, mbpp, string-ops today
    pool = [t.name for t in class_tasks(CODING)]
    assert pool[0] == "coding" and sorted(pool) == code_tasks
    assert [t.name for t in class_tasks(CODING, pool="expert")] == ["coding"]
    assert "mbpp" not in [t.name for t in class_tasks(CODING, exclude=["mbpp"])]


def test_each_task_of_the_category_gets_an_equal_share_of_the_class() -> None:
    prompts = router_prompts([LOGIC], "train", per_class=120)
    reasoning = [p for p, label in zip(prompts.prompts, prompts.labels, strict=True) if label == "reasoning"]
    assert len(reasoning) == 120 and len(set(reasoning)) == 120
    assert {"logic", "arc-easy", "arc-challenge", "possession"} <= set(REASONING)
    shares = Counter(_task_of(p, REASONING, "train") for p in reasoning)
    assert set(shares) == set(REASONING)
    assert max(shares.values()) - min(shares.values()) <= 2, shares
    assert prompts.counts() == {"reasoning": 120, OTHER: 120}
    assert "arc-challenge" in prompts.sources["reasoning"]


def test_the_expert_pool_and_exclusions_keep_other_tasks_out() -> None:
    own = router_prompts([LOGIC], "train", per_class=40, pool="expert")
    assert {_task_of(p, REASONING, "train") for p in own.prompts[:40]} == {"logic"}
    held_out = router_prompts([LOGIC], "train", per_class=40, exclude=["arc-challenge"])
    assert {_task_of(p, REASONING, "train") for p in held_out.prompts[:40]} == set(REASONING) - {"arc-challenge"}


def test_no_test_item_of_any_pooled_task_reaches_the_router() -> None:
    """Validation prompts come from valid splits only, training prompts from train splits only."""
    pooled = sorted(t.name for t in list_tasks() if t.category == "reasoning")
    for split, other_splits in (("train", ("valid", "test")), ("valid", ("train", "test"))):
        drawn = set(router_prompts([LOGIC], split, per_class=60).prompts)
        for task in pooled:
            for other in other_splits:
                for item in get_task(task).split(other):
                    assert item.prompt not in drawn, (split, task, other)


def test_the_experts_own_task_cannot_be_excluded_and_an_unknown_pool_is_refused() -> None:
    with pytest.raises(TaskError, match="own task and cannot be excluded"):
        class_tasks(LOGIC, exclude=["logic"])
    with pytest.raises(TaskError, match="unknown task pool 'all'"):
        class_tasks(LOGIC, pool="all")


def test_a_multiple_choice_prompt_is_cut_to_its_question_and_statements() -> None:
    prompt = (
        "Which conclusion follows from these statements?\n\nAll novels are imaginative. All imaginative works inspire"
        " thought.\n\nA. Hence, novels are not imaginative.\nB. Hence, all novels inspire thought.\n\n"
        "Answer with the letter of the correct choice, as 'Answer: <letter>'."
    )
    assert question_only(prompt) == (
        "Which conclusion follows from these statements?\n\nAll novels are imaginative. All imaginative works inspire"
        " thought."
    )
    assert question_only("What is 9 * 5 + 2? Answer with the number only.") == "What is 9 * 5 + 2?"
    assert question_only("Give the capital of France.") == "Give the capital of France."
