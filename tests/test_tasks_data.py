"""The named tasks load from the shipped data with the documented, disjoint, deterministic splits,
and every test item's gold answer, written as the prompt asks, scores correct (a wrong one does not)."""

from __future__ import annotations

import ast
import operator
import random
import re
from pathlib import Path

import pytest

from t2cli.tasks import Task, TaskError, get_task, list_tasks
from t2cli.tasks.docs import render_split_table

ROOT = Path(__file__).resolve().parent.parent
SIZES = {
    "gsm8k": (719, 100, 500),
    "math500": (200, 50, 250),
    "arithmetic": (532, 100, 400),
    "addition": (3495, 100, 500),
    "arc-easy": (470, 100, 2376),
    "arc-challenge": (247, 50, 1172),
    "mbpp": (200, 100, 200),
    "humaneval": (20, 0, 144),
    "coding": (512, 100, 400),
    "string-ops": (719, 100, 400),
    "logic": (618, 100, 400),
    "shapes": (1000, 100, 400),
    "python-types": (2000, 100, 300),
    "python-types-expr": (0, 20, 300),
    "possession": (2000, 100, 300),
    "possession-long": (0, 20, 300),
    "addition-3digit": (0, 20, 300),
}
TEXT_TASKS = [
    "gsm8k",
    "math500",
    "arithmetic",
    "addition",
    "arc-easy",
    "arc-challenge",
    "coding",
    "string-ops",
    "logic",
]
CODE_TASKS = ["mbpp", "humaneval"]


def test_every_task_is_listed() -> None:
    assert [task.name for task in list_tasks()] == sorted(SIZES)


@pytest.mark.parametrize("name", sorted(SIZES))
def test_split_sizes(name: str) -> None:
    train, valid, test = SIZES[name]
    assert get_task(name).split_sizes() == {"train": train, "valid": valid, "test": test}


@pytest.mark.parametrize("name", sorted(SIZES))
def test_splits_are_disjoint(name: str) -> None:
    task = get_task(name)
    ids = {split: {item.id.split("/", 2)[2] for item in task.split(split)} for split in ("train", "valid", "test")}
    # A question is its text and its pictures: "How many red circles...?" recurs, on other pictures.
    prompts = {
        split: {(item.prompt, item.images) for item in task.split(split)} for split in ("train", "valid", "test")
    }
    for a, b in (("train", "valid"), ("train", "test"), ("valid", "test")):
        assert not ids[a] & ids[b], f"{name}: {a} and {b} share items"
        assert not prompts[a] & prompts[b], f"{name}: {a} and {b} share a question"
    for split in ids:
        assert len(ids[split]) == len(task.split(split)), f"{name} {split} has duplicate items"


@pytest.mark.parametrize("name", sorted(SIZES))
def test_splits_are_deterministic(name: str) -> None:
    fresh = type(get_task(name))()  # a new instance reads and splits the data again
    for split in ("train", "valid", "test"):
        assert [i.id for i in fresh.split(split)] == [i.id for i in get_task(name).split(split)]
        assert fresh.split(split) == get_task(name).split(split)


def test_aliases_and_case() -> None:
    assert get_task("math") is get_task("gsm8k")
    assert get_task("CODE") is get_task("mbpp")
    assert get_task(" Reasoning ") is get_task("arc-easy")
    assert get_task("arc-easy").category == "reasoning"


def test_unknown_task_lists_the_names() -> None:
    with pytest.raises(TaskError) as info:
        get_task("gsm9k")
    assert "gsm9k" in info.value.message
    for name in [*SIZES, "math", "code", "reasoning", ".jsonl"]:
        assert name in info.value.hint


def test_unknown_split_is_an_error() -> None:
    with pytest.raises(TaskError, match="unknown split 'dev'"):
        get_task("gsm8k").split("dev")


def _find(task: Task, source_id: str):
    items = [i for s in ("train", "valid", "test") for i in task.split(s) if i.id.split("/", 2)[2] == source_id]
    assert len(items) == 1, f"{task.name} item {source_id} not found exactly once"
    return items[0]


def test_known_gold_answers() -> None:
    janet = _find(get_task("gsm8k"), "0")
    assert janet.answer == "18" and janet.prompt.startswith("Janet") and "Answer: <number>" in janet.prompt
    assert _find(get_task("gsm8k"), "201").answer == "114200"  # "#### 114,200": the thousands comma goes
    polar = _find(get_task("math500"), "0")
    assert polar.answer == "(3,\\frac{\\pi}{2})"  # from the solution's \boxed, not the mangled "answer" field
    four_times_eight = _find(get_task("arithmetic"), "0")
    assert four_times_eight.prompt == "What is 4 * 8? Answer with the number only." and four_times_eight.answer == "32"
    photosynthesis = _find(get_task("arc-easy"), "Mercury_417466")
    assert photosynthesis.answer == "A" and "A. Sunlight is the source of energy" in photosynthesis.prompt
    assert _find(get_task("arc-challenge"), "Mercury_7175875").answer == "C"
    remove_occ = _find(get_task("mbpp"), "11")
    assert remove_occ.meta["tests"][0] == 'assert remove_Occ("hello","l") == "heo"'
    assert 'assert remove_Occ("hello","l") == "heo"' in remove_occ.prompt
    close = _find(get_task("humaneval"), "0")
    assert close.meta["tests"][-1] == "check(has_close_elements)" and "def has_close_elements" in close.prompt


def test_every_gsm8k_gold_is_a_plain_number() -> None:
    for split in ("train", "valid", "test"):
        for item in get_task("gsm8k").split(split):
            assert re.fullmatch(r"-?\d+(\.\d+)?", item.answer), item


_OPS = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
}


def _evaluate(expression: str) -> float:
    """The value of an arithmetic item's expression, computed independently of its options."""
    percent = re.fullmatch(r"(\d+)% of (-?\d+)", expression)
    if percent:
        return int(percent[1]) * int(percent[2]) / 100
    python = expression.replace(" mod ", " % ").replace("^", "**")
    python = re.sub(r"sqrt\((\d+)\)", r"(\1 ** 0.5)", python)

    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.BinOp):
            return _OPS[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp):
            return _OPS[type(node.op)](value(node.operand))
        raise ValueError(f"unexpected {ast.dump(node)} in {expression!r}")

    return value(ast.parse(python, mode="eval").body)


def test_arithmetic_golds_equal_the_expressions() -> None:
    """Catches an option-parsing slip: the gold must be the expression's value."""
    task = get_task("arithmetic")
    for split in ("train", "valid", "test"):
        for item in task.split(split):
            assert _evaluate(item.meta["expression"]) == float(item.answer), item


def test_basic_skills_items_keep_every_option_and_their_gold() -> None:
    """Option texts keep their inner spaces (string items differ by them) and the gold letter names an option."""
    for name in ("coding", "string-ops", "logic"):
        for item in get_task(name).split("test"):
            letters = [line[0] for line in item.prompt.split("\n\n")[-2].split("\n")]
            assert letters == [chr(ord("A") + i) for i in range(len(item.meta["choices"]))], item.id
            assert item.answer in letters, item.id
    trims = [i for i in get_task("string-ops").split("test") if any(c != c.strip() for c in i.meta["choices"])]
    assert trims, "string-ops has items whose options differ only in spaces"


def test_arc_test_questions_are_not_in_training() -> None:
    for name in ("arc-easy", "arc-challenge"):
        task = get_task(name)
        question = lambda item: item.prompt.split("\n\n")[0]
        seen = {question(i) for s in ("train", "valid") for i in task.split(s)}
        assert not seen & {question(i) for i in task.split("test")}


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_gold_scores_correct_on_every_test_item(name: str) -> None:
    task = get_task(name)
    for item in task.split("test"):
        result = task.score(item, task.reference_completion(item))
        assert result.correct, (item.id, item.answer, result)


def _wrong(item) -> str:
    if item.kind == "number":
        return f"Answer: {int(float(item.answer)) + 1}"
    if item.kind == "choice":
        letters = "ABCDE"[: len(item.meta["choices"])]
        return f"Answer: {letters[(letters.index(item.answer) + 1) % len(letters)]}"
    if item.kind == "math":
        return f"\\boxed{{{item.answer}+1}}"
    raise AssertionError(item.kind)


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_wrong_answer_scores_incorrect_on_every_test_item(name: str) -> None:
    task = get_task(name)
    for item in task.split("test"):
        result = task.score(item, _wrong(item))
        assert not result.correct, (item.id, item.answer, result)


@pytest.mark.parametrize("name", CODE_TASKS)
def test_reference_solutions_pass_on_every_test_item(name: str) -> None:
    """All test items through the sandbox (~10 s per task on 2 cores)."""
    task = get_task(name)
    items = task.split("test")
    scores = task.score_batch(items, [task.reference_completion(item) for item in items])
    failures = [(item.id, score.reason) for item, score in zip(items, scores) if not score.correct]
    assert not failures


@pytest.mark.parametrize("name", CODE_TASKS)
def test_wrong_code_fails(name: str) -> None:
    task = get_task(name)
    items = random.Random(0).sample(task.split("test"), 6)
    wrong = []
    for item in items:
        entry = re.search(r"def (\w+)\(", task.reference_completion(item)).group(1)
        wrong.append(f"```python\ndef {entry}(*args, **kwargs):\n    return None\n```")
    assert not any(score.correct for score in task.score_batch(items, wrong))


def test_addition_training_pairs_are_fresh_and_never_held_out() -> None:
    task = get_task("addition")
    held_out = {tuple(sorted(map(int, re.findall(r"\d+", i.prompt)))) for s in ("valid", "test") for i in task.split(s)}
    sample = task.sample_train(5000, random.Random(1))
    assert len(sample) == 5000
    pairs = {tuple(sorted(map(int, re.findall(r"\d+", i.prompt)))) for i in sample}
    assert not pairs & held_out
    assert len(pairs) > 2000  # fresh draws, not a fixed list
    assert all(10 <= a <= 99 and 10 <= b <= 99 for a, b in pairs)
    assert [i.id for i in task.sample_train(50, random.Random(7))] == [
        i.id for i in task.sample_train(50, random.Random(7))
    ]
    item = sample[0]
    a, b = map(int, re.findall(r"\d+", item.prompt))
    assert item.prompt == f"What is {a} + {b}? Answer with the number only." and item.answer == str(a + b)


def test_default_sample_train_draws_from_the_train_split() -> None:
    task = get_task("humaneval")  # 20 training items
    train_ids = {i.id for i in task.split("train")}
    sample = task.sample_train(50, random.Random(3))
    assert len(sample) == 50 and {i.id for i in sample} == train_ids  # every item before any repeats
    assert [i.id for i in task.sample_train(5, random.Random(3))] == [i.id for i in sample[:5]]


def test_score_batch_checks_lengths() -> None:
    with pytest.raises(ValueError):
        get_task("gsm8k").score_batch(get_task("gsm8k").split("test")[:2], ["1"])


def test_docs_split_table_is_current() -> None:
    table = render_split_table()
    assert table in (ROOT / "docs" / "tasks.md").read_text(), (
        "docs/tasks.md is stale: paste the output of `python -m t2cli.tasks.docs` into it"
    )
    for name, (train, valid, test) in SIZES.items():
        assert f"| `{name}` |" in table and f"| {train} | {valid} | {test} |" in table
