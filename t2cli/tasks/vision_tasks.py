"""Visual tasks generated with Pillow: ``shapes`` (count, colour, shape and position questions)."""

from __future__ import annotations

import random

from t2cli.tasks.lookup import register_task
from t2cli.tasks.shapes import QUESTION_TYPES, ShapeQuestion, random_question
from t2cli.tasks.types import SPLIT_SEED, Task, TaskItem, seeded_split

N_ITEMS = 1500


@register_task(
    "shapes",
    category="vision",
    description="Questions about coloured shapes drawn with Pillow: counts, colours, shapes, left or right",
)
class Shapes(Task):
    """1500 generated pictures with one question each, seeded 1000/100/400.

    Item ``i`` is drawn from its own seeded generator, so an item never changes when another
    does; question types take turns (count, colour, shape, position). The same question text
    recurs with different answers ("How many red circles...?" is 0, 1, 2 or 3), so only the
    picture answers it. Pictures are drawn when ``ItemImage.open`` is called, never stored.
    """

    source = f"generated: {N_ITEMS} Pillow pictures of 2-5 shapes on a 3x3 grid, one question each"
    max_new_tokens = 16
    sizes = {"valid": 100, "test": 400}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        questions = [(i, shape_question(i)) for i in range(N_ITEMS)]
        parts = seeded_split(questions, self.sizes, self.name, key=lambda q: str(q[0]))
        return {split: [self._item(split, i, q) for i, q in part] for split, part in parts.items()}

    def _item(self, split: str, i: int, q: ShapeQuestion) -> TaskItem:
        return TaskItem(
            id=f"{self.name}/{split}/{i}",
            prompt=q.question,
            answer=q.answer,
            kind="exact",
            meta={"question_type": q.type},
            images=(q.scene,),
        )


def shape_question(i: int) -> ShapeQuestion:
    """Item ``i`` of ``shapes``: its own seed, its question type by turn."""
    return random_question(random.Random(f"{SPLIT_SEED}:shapes:{i}"), QUESTION_TYPES[i % len(QUESTION_TYPES)])
