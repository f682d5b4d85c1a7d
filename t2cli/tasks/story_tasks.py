"""Generated reasoning tasks: who holds an object after it changes hands (trained; a longer variant held out).

State tracking in the manner of bAbI's "who has the ball" stories. Read naively, the story's first
sentence names the wrong person (the first holder): the 135M embedded model names that person in
56% of its answers on the test split (167 of 300; 36% right). ``possession`` (one to three
hand-overs among three people) is what the starter bank's reasoning expert learns; ``possession-long`` (four to six hand-overs among four people,
objects and names alike) is held out for bench/t2_table.py.
"""

from __future__ import annotations

import random

from t2cli.tasks.generated import HELD_OUT_SIZES, GeneratedTask, Question
from t2cli.tasks.lookup import register_task

NAMES = (
    "Anna", "Ben", "Cara", "Dan", "Eva", "Finn", "Gina", "Hugo", "Ivy", "Jack", "Kim", "Leo", "Mia", "Nick",
    "Olga", "Paul", "Rosa", "Sam", "Tara", "Umar", "Vera", "Will", "Yara", "Zoe",
)  # fmt: skip
OBJECTS = ("key", "ball", "book", "coin", "cup", "hat", "map", "pen", "ring", "torch")


def possession_question(rng: random.Random, people: int, handovers: tuple[int, int]) -> Question:
    """A story of ``people`` people passing one object ``handovers`` (low, high) times, and who has it now."""
    names = rng.sample(NAMES, people)
    thing = rng.choice(OBJECTS)
    holder = names[0]
    sentences = [f"{holder} has the {thing}."]
    for _ in range(rng.randint(*handovers)):
        receiver = rng.choice([name for name in names if name != holder])
        sentences.append(f"{holder} gives the {thing} to {receiver}.")
        holder = receiver
    prompt = " ".join(sentences) + f" Who has the {thing} now? Answer with the name only."
    return Question(prompt, holder, tuple(names))


@register_task("possession", category="reasoning", description="Who has the object after 1-3 hand-overs (generated)")
class Possession(GeneratedTask):
    source = "generated: stories of three people and 1-3 hand-overs of one object"

    def question(self, rng: random.Random) -> Question:
        return possession_question(rng, people=3, handovers=(1, 3))


@register_task(
    "possession-long",
    category="reasoning",
    description="Who has the object after 4-6 hand-overs (held out: 20 few-shot items, 300 test)",
)
class PossessionLong(GeneratedTask):
    source = "generated: stories of four people and 4-6 hand-overs of one object"
    sizes = HELD_OUT_SIZES

    def question(self, rng: random.Random) -> Question:
        return possession_question(rng, people=4, handovers=(4, 6))
