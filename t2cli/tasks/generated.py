"""Tasks whose questions are generated from a seed: fixed, distinct splits and an exact gold for every item.

A ``GeneratedTask`` writes one question from a ``random.Random`` (``question``). Its splits are
drawn once from the task's own seed, test first, then valid, then train, and no question text is
in two splits. A held-out variant (a task that only tests a skill another task trains) has no
train items, and a few valid items only for few-shot adaptation (`t2 adapt`, CEM): ``sizes = {"valid": 20, "test": N}``.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from t2cli.tasks.types import SPLIT_SEED, Task, TaskError, TaskItem

# A held-out variant: no training items; its valid items are only the few shots of `t2 adapt` (CEM).
HELD_OUT_SIZES = {"valid": 20, "test": 300}
MAX_DRAWS_PER_ITEM = 50  # a generator that keeps repeating itself has too few distinct questions


@dataclass(frozen=True)
class Question:
    prompt: str
    answer: str
    choices: tuple[str, ...] = ()  # the candidate answers the `named` scorer looks for
    kind: str = "named"  # the scorer


class GeneratedTask(Task):
    """A task of generated questions, each scored by its ``kind`` (``named`` unless the question says otherwise)."""

    sizes: ClassVar[dict[str, int]] = {"train": 2000, "valid": 100, "test": 300}
    max_new_tokens = 16

    @abstractmethod
    def question(self, rng: random.Random) -> Question:
        """One question drawn with ``rng``."""

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        rng = random.Random(f"{SPLIT_SEED}:{self.name}")
        seen: set[str] = set()
        splits: dict[str, list[TaskItem]] = {}
        for split in ("test", "valid", "train"):
            wanted = self.sizes.get(split, 0)
            items: list[TaskItem] = []
            draws = 0
            while len(items) < wanted:
                draws += 1
                if draws > MAX_DRAWS_PER_ITEM * wanted:
                    raise TaskError(f"task '{self.name}' cannot draw {wanted} distinct {split} questions")
                q = self.question(rng)
                if q.prompt in seen:
                    continue
                seen.add(q.prompt)
                items.append(
                    TaskItem(
                        id=f"{self.name}/{split}/{len(seen)}",  # the question's draw number: one id per question
                        prompt=q.prompt,
                        answer=q.answer,
                        kind=q.kind,
                        meta={"choices": list(q.choices)} if q.choices else {},
                    )
                )
            splits[split] = items
        return splits
