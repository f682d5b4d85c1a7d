"""The generated tasks (python-types, possession, their held-out variants, addition-3digit) and the `named` scorer."""

from __future__ import annotations

import re

import pytest

from t2cli.tasks import TaskError, get_task
from t2cli.tasks.custom import load_task_file
from t2cli.tasks.python_tasks import TYPE_NAMES
from t2cli.tasks.scorers import first_named, get_scorer

GENERATED = ["python-types", "python-types-expr", "possession", "possession-long", "addition-3digit"]
HELD_OUT = {"python-types-expr": "python-types", "possession-long": "possession", "addition-3digit": "addition"}


def named(completion: str, answer: str, choices: list[str]):
    return get_scorer("named")(completion, answer, choices=choices)


@pytest.mark.parametrize(
    "completion, choices, found",
    [
        ("Ben has the key now.", ["Anna", "Ben", "Cara"], "Ben"),
        ("Cara. Earlier Anna had it.", ["Anna", "Ben", "Cara"], "Cara"),  # the first named, not the last
        ("the answer is BEN", ["Anna", "Ben"], "Ben"),  # case ignored
        ("Benjamin has it", ["Anna", "Ben"], None),  # whole words only
        ("The type of `480` in Python is `int`.", list(TYPE_NAMES), "int"),
        ("print(x) is NoneType", list(TYPE_NAMES), "NoneType"),  # "int" inside "print" is no word
        ("Nobody has it.", ["Anna", "Ben"], None),
    ],
)
def test_first_named(completion: str, choices: list[str], found: str | None) -> None:
    assert first_named(completion, choices) == found


def test_named_prefers_the_longer_candidate_at_one_position() -> None:
    assert first_named("Ann Marie has it", ["Ann", "Ann Marie"]) == "Ann Marie"


def test_named_scores_the_first_candidate_and_refuses_items_without_choices() -> None:
    assert named("Ben has the key.", "Ben", ["Anna", "Ben"]).correct
    wrong = named("Anna has the key. Then Ben.", "Ben", ["Anna", "Ben"])
    assert not wrong.correct and wrong.extracted == "Anna"
    nothing = named("I do not know.", "Ben", ["Anna", "Ben"])
    assert not nothing.correct and nothing.extracted is None
    with pytest.raises(TaskError, match="candidate answers"):
        named("Ben", "Ben", [])


@pytest.mark.parametrize("name", GENERATED)
def test_splits_are_distinct_and_the_same_on_every_build(name: str) -> None:
    task = get_task(name)
    prompts = [item.prompt for split in ("train", "valid", "test") for item in task.split(split)]
    assert len(prompts) == len(set(prompts))  # no question in two splits, none twice
    rebuilt = type(task)()
    assert [(i.prompt, i.answer) for i in rebuilt.split("test")] == [(i.prompt, i.answer) for i in task.split("test")]


@pytest.mark.parametrize("name", HELD_OUT)
def test_held_out_variants_have_no_training_items_and_none_of_their_training_tasks(name: str) -> None:
    task = get_task(name)
    assert task.split("train") == [] and len(task.split("valid")) == 20 and len(task.split("test")) == 300
    with pytest.raises(TaskError, match="no training items"):
        task.sample_train(1, __import__("random").Random(0))
    trained = get_task(HELD_OUT[name])
    assert trained.category == task.category
    seen = {item.prompt for split in ("train", "valid", "test") for item in trained.split(split)}
    assert not seen & {item.prompt for split in ("valid", "test") for item in task.split(split)}


def test_python_types_golds_are_the_evaluated_types() -> None:
    for name in ("python-types", "python-types-expr"):
        for item in get_task(name).split("test"):
            code = re.search(r"`(.*)`", item.prompt).group(1)
            value = eval(code, {"print": lambda *a: None})
            assert type(value).__name__ == item.answer, item.prompt
            assert item.meta["choices"] == list(TYPE_NAMES)
            assert get_task(name).score(item, f"It is {item.answer}.").correct


def test_expression_types_are_balanced() -> None:
    answers = [item.answer for item in get_task("python-types-expr").split("test")]
    assert max(answers.count(t) for t in TYPE_NAMES) < 0.2 * len(answers)  # an "always int" answer gets < 20%


def _replay(prompt: str) -> str:
    """Who holds the object at the end of a possession story, read back from its sentences."""
    holder = re.match(r"(\w+) has the", prompt).group(1)
    for giver, receiver in re.findall(r"(\w+) gives the \w+ to (\w+)\.", prompt):
        assert giver == holder  # only the holder gives
        holder = receiver
    return holder


@pytest.mark.parametrize("name, people, low, high", [("possession", 3, 1, 3), ("possession-long", 4, 4, 6)])
def test_possession_golds_replay_the_story(name: str, people: int, low: int, high: int) -> None:
    items = get_task(name).split("test")
    for item in items:
        assert item.answer == _replay(item.prompt)
        assert len(item.meta["choices"]) == people and item.answer in item.meta["choices"]
        assert low <= item.prompt.count(" gives the ") <= high
    # The first holder is the naive answer; it must not be the gold too often for the task to test anything.
    first_holder_right = sum(re.match(r"(\w+)", i.prompt).group(1) == i.answer for i in items)
    assert first_holder_right < 0.35 * len(items)


def test_addition_3digit_sums() -> None:
    for item in get_task("addition-3digit").split("test"):
        a, b = (int(x) for x in re.findall(r"\d+", item.prompt))
        assert 100 <= a <= 999 and 100 <= b <= 999 and item.answer == str(a + b) and item.kind == "number"


def test_a_custom_named_item_keeps_its_choices(tmp_path) -> None:
    path = tmp_path / "story.jsonl"
    path.write_text(
        '{"prompt": "Ann gives Bo the key. Who has it?", "answer": "Bo", "kind": "named", "choices": ["Ann", "Bo"]}\n'
    )
    item = load_task_file(path).split("test")[0]
    assert item.meta == {"choices": ["Ann", "Bo"]}
    assert load_task_file(path).score(item, "Bo has it.").correct
