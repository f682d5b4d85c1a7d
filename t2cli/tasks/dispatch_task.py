"""The ``dispatch`` task: which expert category does a prompt belong to? (docs/method.md §3)

Pass 1 of ``t2 ask --strategy prompt|classifier`` asks the model to classify the
prompt; this module holds the pieces that pass 1 and the classifier's training
share, so that the classifier is trained on exactly the question it is asked:

- ``classification_prompt(question, categories)``: the paper's prompt, listing
  each category with a one-line description, plus ``other`` (= base weights),
  and asking for the answer as ``\\boxed{category}``;
- ``parse_category(answer, categories)``: reads the category back from what the
  model wrote (case-insensitive, punctuation and extra words tolerated);
- the ``category`` scorer (correct when ``parse_category`` finds the gold label);
- ``DispatchTask``: prompts drawn with a fixed seed from the train/valid/test
  splits of the tasks of the experts registered for a base model, labelled with
  each expert's category.

The task depends on the registry, so it cannot be a plain ``@register_task``
class: it is registered with ``register_task_factory`` and built by
``get_task("dispatch", registry=registry, base_model_id=id)``, which is what
``t2 train --task dispatch`` and ``t2 eval --task dispatch`` do once the base
model is loaded.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from registry.queries import experts as expert_rows
from t2cli.tasks.lookup import get_task, register_task_factory
from t2cli.tasks.scorers import first_mentioned, scorer
from t2cli.tasks.types import SPLIT_SEED, SPLITS, Score, Task, TaskError, TaskItem

if TYPE_CHECKING:
    from registry import Registry

DISPATCH_TASK = "dispatch"  # the task name, and the category of the classification expert it trains
OTHER = "other"  # the answer that means "none of the experts": base weights
DISPATCH_MAX_NEW_TOKENS = 48  # enough for "Classification: \boxed{reasoning}" and a few words around it

# One-line descriptions of the paper's three categories (paraphrasing its classification prompt).
# Any other category is described by its expert's own description.
CATEGORY_GUIDES = {
    "code": "questions asking for a program, a function or an algorithm; they often name programming terms, "
    "language syntax or data structures",
    "math": "questions that need calculation, formulas or statistics; they often contain numbers, equations "
    "or mathematical operations",
    "reasoning": "questions that need logical thinking, scientific knowledge or the critical analysis of "
    "statements, answered from general understanding",
}
OTHER_GUIDE = "questions that fit none of the categories above"

# Items per category drawn from each source task's split of the same name.
PER_CATEGORY = {"train": 200, "valid": 25, "test": 50}


# --------------------------------------------------------------------------- prompt and parser


def classification_prompt(question: str, categories: Mapping[str, str]) -> str:
    """The pass-1 user message: classify ``question`` into one of ``categories`` (name -> description) or other."""
    names = [*categories, OTHER]
    lines = [
        f"Analyze the question below and classify it into exactly one of these {len(names)} categories:",
        "",
    ]
    for number, name in enumerate(names, 1):
        guide = categories.get(name) or OTHER_GUIDE
        lines.append(f"{number}. {name}: {guide}.")
    lines += [
        "",
        "Consider the main skill and knowledge the question needs; if it spans several categories, choose the "
        "dominant one. Do not answer the question.",
        "Reply with the category name in \\boxed{}, as: Classification: \\boxed{<category name>}",
        "",
        f"Question: {question}",
    ]
    return "\n".join(lines)


def _category_pattern(category: str) -> re.Pattern[str]:
    # "arc-easy" also matches "arc easy" / "arc_easy"; a plural "s"/"es" is tolerated ("others", "maths").
    words = [re.escape(w) for w in re.split(r"[\s_\-]+", category.casefold()) if w]
    return re.compile(r"(?<![0-9a-z])" + r"[\s_\-]+".join(words) + r"(?:e?s)?(?![0-9a-z])")


def _earliest(text: str, categories: Sequence[str]) -> str | None:
    """The category mentioned first in ``text`` (the longer name when two start at the same place)."""
    return first_mentioned(text, categories, _category_pattern)


def boxed_category(answer: str, categories: Sequence[str]) -> str | None:
    """The category named by the first ``\\boxed{...}`` of ``answer`` that names one, else None."""
    for box in re.finditer(r"\\boxed\s*\{([^{}]*)\}", answer.casefold()):
        found = _earliest(box.group(1), categories)
        if found is not None:
            return found
    return None


def parse_category(answer: str, categories: Sequence[str]) -> str | None:
    """The category the model chose in ``answer``, or None when it names none of ``categories``.

    Case and punctuation do not matter. A ``\\boxed{...}`` that names a category
    wins (it is the format the prompt asks for; the first such box counts);
    otherwise the earliest-mentioned category anywhere in the answer. Include
    ``OTHER`` in ``categories`` for it to be recognised.
    """
    return boxed_category(answer, categories) or _earliest(answer.casefold(), categories)


ANSWER_PREFIX = "Classification: \\boxed{"  # how the prompt asks the answer to start


def _category_reference(answer: str, **meta: Any) -> str:
    return f"{ANSWER_PREFIX}{answer}}}"


@scorer("category", reference=_category_reference)
def score_category(completion: str, answer: str, categories: Sequence[str] | None = None, **meta: Any) -> Score:
    """Correct when ``parse_category`` reads ``answer`` from the completion (``other`` always counts as a label)."""
    known = [*(categories or [answer]), OTHER]
    found = parse_category(completion, known)
    if found is None:
        return Score(False, None, "no category named")
    return Score(found == answer, found, "equal" if found == answer else f"{found} != {answer}")


# --------------------------------------------------------------------------- the task


class DispatchTask(Task):
    """Classify prompts of the experts' tasks into the experts' categories (balanced, fixed seed).

    ``sources`` is one (category, description, task) per category; each split
    takes up to ``PER_CATEGORY[split]`` items of the source task's split of the
    same name, so no test question of a source task is trained on.
    """

    category = DISPATCH_TASK
    description = "Classify a prompt into the categories of the registered experts (trains the classifier expert)"
    source = "prompts of the registered experts' tasks, labelled with each expert's category"
    max_new_tokens = DISPATCH_MAX_NEW_TOKENS

    def __init__(self, sources: Sequence[tuple[str, str, Task]]) -> None:
        super().__init__()
        self.name = DISPATCH_TASK
        self.sources = list(sources)
        self.categories = {category: description for category, description, _ in self.sources}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        labels = [*self.categories, OTHER]
        splits: dict[str, list[TaskItem]] = {}
        for split in SPLITS:
            items = []
            for category, _, task in self.sources:
                pool = task.split(split)
                drawn = random.Random(f"{SPLIT_SEED}:{DISPATCH_TASK}:{category}:{split}").sample(
                    pool, min(len(pool), PER_CATEGORY[split])
                )
                items += [
                    TaskItem(
                        id=f"{DISPATCH_TASK}/{split}/{category}/{item.id}",
                        prompt=classification_prompt(item.prompt, self.categories),
                        answer=category,
                        kind="category",
                        meta={"categories": labels, "source_task": task.name},
                    )
                    for item in drawn
                ]
            # Interleave the categories: validation takes the first N items of the split.
            random.Random(f"{SPLIT_SEED}:{DISPATCH_TASK}:{split}").shuffle(items)
            splits[split] = items
        return splits


# --------------------------------------------------------------------------- the category experts


@dataclass(frozen=True)
class CategoryExpert:
    """The expert that answers one category, as the classification prompt describes it."""

    category: str
    expert: str
    description: str
    task: str | None  # the task name recorded on the expert
    task_source: str | None  # what `t2 train --task` was given (a name or a .jsonl path), if recorded


def category_experts(registry: Registry, base_model_id: int | None) -> list[CategoryExpert]:
    """One expert per category for this base model, sorted by category.

    Candidates are the experts of ``base_model_id`` that carry a category, except
    mixtures (task adaptations, not category experts), the dispatch classifier
    itself and the reserved ``other``; when several share a category the latest
    registered wins. A known category (math, code, reasoning) is described as in
    the paper's prompt, any other one by its expert's description.
    """
    if base_model_id is None:
        return []
    latest: dict[str, CategoryExpert] = {}
    for row in expert_rows.of_base_model(registry, base_model_id):
        category = (row.category or "").strip()
        if not category or row.kind == "mixture" or category.casefold() in (DISPATCH_TASK, OTHER):
            continue
        config = json.loads(row.config_json or "{}")
        source = (config.get("training") or {}).get("task")
        description = (
            CATEGORY_GUIDES.get(category.casefold())
            or (row.description or "").strip().rstrip(".")
            or f"questions like those of the task {row.task or row.name}"
        )
        latest[category] = CategoryExpert(category, row.name, description, row.task, source)
    return [latest[c] for c in sorted(latest)]


def dispatch_task(registry: Registry, base_model_id: int) -> DispatchTask:
    """The dispatch task of a base model, from the category experts registered for it (see ``category_experts``)."""
    experts = category_experts(registry, base_model_id)
    if len(experts) < 2:
        found = ", ".join(f"{e.category} ({e.expert})" for e in experts) or "none"
        raise TaskError(
            f"the dispatch task needs experts of at least two categories for this base model; found: {found}",
            hint="train experts on tasks of other categories first, e.g. `t2 train --task math` and `t2 train --task code`",
        )
    sources = []
    for expert in experts:
        source = expert.task_source or expert.task
        if not source:
            raise TaskError(
                f"expert {expert.expert!r} (category {expert.category}) records no task",
                hint="the dispatch task draws its prompts from each expert's task",
            )
        try:
            task = get_task(source)
        except TaskError as exc:
            raise TaskError(
                f"expert {expert.expert!r} was trained on task {source!r}, which cannot be loaded: {exc.message}",
                hint=exc.hint,
            ) from None
        sources.append((expert.category, expert.description, task))
    return DispatchTask(sources)


register_task_factory(DISPATCH_TASK, dispatch_task)
