"""Custom tasks from .jsonl files: a valid file loads and scores; every malformed case is a TaskError naming the line."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from t2cli.tasks import TaskError, get_task
from t2cli.tasks.custom import MAX_LINE_BYTES

GOOD = [
    {"prompt": "What is 2 + 2?", "answer": "4", "kind": "number"},
    {"prompt": "What is 3 + 4?", "answer": 7, "kind": "number", "id": "sum-7"},
    {"prompt": "Capital of France?\nA. Rome\nB. Paris", "answer": "b", "kind": "choice", "choices": ["Rome", "Paris"]},
    {"prompt": "Colour of the sky?", "answer": "blue", "kind": "exact"},
    {"prompt": "Any integer.", "answer": r"-?\d+", "kind": "regex"},
    {"prompt": "Half of one?", "answer": "\\frac{1}{2}", "kind": "math"},
    {
        "prompt": "Write add(a, b).",
        "answer": "",
        "kind": "python_tests",
        "tests": ["assert add(1, 2) == 3"],
        "setup": "import math",
    },
    {"prompt": "What is 10 - 4?", "answer": "6", "kind": "number", "notes": "extra fields are ignored"},
    {"prompt": "What is 5 * 5?", "answer": "25", "kind": "number"},
    {"prompt": "What is 9 / 3?", "answer": "3", "kind": "number"},
]


def write(path: Path, lines: list) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines), encoding="utf-8"
    )
    return path


def test_valid_file_loads_with_a_seeded_split(tmp_path: Path) -> None:
    path = write(tmp_path / "my-quiz.jsonl", [*GOOD[:4], "", *GOOD[4:]])  # a blank line is skipped
    task = get_task(str(path))
    assert task.name == "my-quiz" and task.category == "custom"
    assert task.split_sizes() == {"train": 6, "valid": 2, "test": 2}
    items = [i for s in ("train", "valid", "test") for i in task.split(s)]
    assert len({i.id for i in items}) == 10
    assert any(i.id.endswith("/sum-7") for i in items) and any(i.id.endswith("/line1") for i in items)
    again = get_task(str(path))
    assert [i.id for i in again.split("test")] == [i.id for i in task.split("test")]


def test_items_keep_their_fields_and_score(tmp_path: Path) -> None:
    task = get_task(str(write(tmp_path / "quiz.jsonl", [{**line, "split": "test"} for line in GOOD])))
    items = {i.prompt: i for i in task.split("test")}
    choice = items["Capital of France?\nA. Rome\nB. Paris"]
    assert choice.answer == "B" and choice.meta == {"choices": ["Rome", "Paris"]}
    assert items["What is 3 + 4?"].answer == "7"
    assert task.score(choice, "Answer: B").correct and not task.score(choice, "Answer: A").correct
    assert task.score(items["Colour of the sky?"], "Blue").correct
    assert task.score(items["Any integer."], "-12").correct
    assert task.score(items["Half of one?"], "\\boxed{0.5}").correct
    code = items["Write add(a, b)."]
    assert code.meta["tests"] == ["assert add(1, 2) == 3"] and code.meta["setup"] == "import math"
    scores = task.score_batch(
        [code, code], ["```python\ndef add(a, b):\n    return a + b\n```", "def add(a, b): return 0"]
    )
    assert [s.correct for s in scores] == [True, False]


def test_explicit_splits(tmp_path: Path) -> None:
    lines = [{**GOOD[0], "split": "train"}, {**GOOD[1], "split": "train"}, {**GOOD[8], "split": "test"}]
    task = get_task(str(write(tmp_path / "s.jsonl", lines)))
    assert task.split_sizes() == {"train": 2, "valid": 0, "test": 1}
    assert len(task.sample_train(5, random.Random(0))) == 5


def test_one_item_goes_to_test(tmp_path: Path) -> None:
    task = get_task(str(write(tmp_path / "one.jsonl", GOOD[:1])))
    assert task.split_sizes() == {"train": 0, "valid": 0, "test": 1}
    with pytest.raises(TaskError, match="no training items"):
        task.sample_train(1, random.Random(0))


def _error(path: Path) -> TaskError:
    with pytest.raises(TaskError) as info:
        get_task(str(path))
    return info.value


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"prompt": "x", "answer": "1", "kind": "number"', "line 3 is not valid JSON"),
        ('["prompt", "answer", "kind"]', "line 3: expected a JSON object, got list"),
        ('{"prompt": "x", "kind": "number"}', "line 3: missing field 'answer'"),
        ('{"answer": "1", "kind": "number"}', "line 3: missing field 'prompt'"),
        ('{"prompt": "x", "answer": "1", "kind": "fuzzy"}', "line 3: unknown kind 'fuzzy'"),
        ('{"prompt": "", "answer": "1", "kind": "number"}', "line 3: 'prompt' must be a non-empty string"),
        ('{"prompt": "x", "answer": "many", "kind": "number"}', "line 3: answer 'many' is not a number"),
        ('{"prompt": "x", "answer": ["1"], "kind": "exact"}', "line 3: 'answer' must be a string"),
        ('{"prompt": "x", "answer": "AB", "kind": "choice"}', "line 3: a choice answer must be one letter"),
        (
            '{"prompt": "x", "answer": "C", "kind": "choice", "choices": ["a", "b"]}',
            "line 3: answer C is beyond the 2 choices",
        ),
        (
            '{"prompt": "x", "answer": "(\\\\d+", "kind": "regex"}',
            "line 3: answer '(\\\\d+' is not a valid regular expression",
        ),
        ('{"prompt": "x", "answer": "", "kind": "python_tests"}', "line 3: python_tests needs 'tests'"),
        ('{"prompt": "x", "answer": "Bo", "kind": "named"}', "line 3: a named item needs 'choices'"),
        (
            '{"prompt": "x", "answer": "Cy", "kind": "named", "choices": ["Ann", "Bo"]}',
            "line 3: answer 'Cy' is not one of its choices",
        ),
        ('{"prompt": "x", "answer": "1", "kind": "number", "split": "dev"}', "line 3: unknown split 'dev'"),
        (
            '{"prompt": "x", "answer": "1", "kind": "number", "id": "line1"}',
            "line 3: id 'line1' was already used on line 1",
        ),
        (
            '{"prompt": "x", "answer": "1", "kind": "number", "split": "test"}',
            'line 1: no "split", but other lines name one',
        ),
    ],
)
def test_malformed_line_names_the_line(tmp_path: Path, bad_line: str, message: str) -> None:
    path = write(tmp_path / "bad.jsonl", [GOOD[0], GOOD[1], bad_line])
    error = _error(path)
    assert message in error.message, error.message
    assert str(path) in error.message


def test_unknown_kind_lists_the_kinds(tmp_path: Path) -> None:
    error = _error(write(tmp_path / "k.jsonl", ['{"prompt": "x", "answer": "1", "kind": "numbr"}']))
    assert "number" in error.hint and "python_tests" in error.hint


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    assert "has no items" in _error(path).message
    path.write_text("\n   \n\n")
    assert "has no items" in _error(path).message


def test_huge_line_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.jsonl"
    big = json.dumps({"prompt": "x" * (MAX_LINE_BYTES + 10), "answer": "1", "kind": "number"})
    path.write_text(json.dumps(GOOD[0]) + "\n" + big + "\n")
    error = _error(path)
    assert "line 2 is longer than the 1 MB limit" in error.message


def test_line_of_exactly_the_limit_is_fine(tmp_path: Path) -> None:
    line = json.dumps({"prompt": "", "answer": "1", "kind": "number"})
    line = line.replace('"prompt": ""', '"prompt": "' + "x" * (MAX_LINE_BYTES - len(line)) + '"')
    assert len(line.encode()) == MAX_LINE_BYTES
    path = tmp_path / "edge.jsonl"
    path.write_text(line + "\n")
    assert get_task(str(path)).split_sizes()["test"] == 1


def test_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(
        json.dumps(GOOD[0]).encode()
        + b"\n"
        + '{"prompt": "caf\u00e9", "answer": "1", "kind": "number"}'.encode("latin-1")
        + b"\n"
    )
    error = _error(path)
    assert "line 2 is not valid UTF-8 (byte 0xe9 at column 16)" in error.message
    assert "UTF-8" in error.hint


def test_utf8_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD[0]).encode() + b"\n")
    assert get_task(str(path)).split_sizes()["test"] == 1


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.jsonl").message
    assert "is not a file" in _error(tmp_path).message


@pytest.mark.parametrize(
    "kinds, budget",
    [
        (["number"], 128),
        (["choice"], 128),
        (["exact", "regex"], 64),
        (["number", "math"], 512),  # the largest of the items' budgets
        (["python_tests"], 512),
    ],
)
def test_the_generation_budget_fits_the_answer_kinds(tmp_path: Path, kinds: list[str], budget: int) -> None:
    from t2cli.tasks.custom import DEFAULT_BUDGETS

    lines = [line for line in GOOD if line["kind"] in kinds]
    task = get_task(str(write(tmp_path / f"{'-'.join(kinds)}.jsonl", lines)))
    assert task.max_new_tokens == budget == max(DEFAULT_BUDGETS[k] for k in kinds)


def test_a_budget_in_the_file_overrides_the_kind_default(tmp_path: Path) -> None:
    numbers = [line for line in GOOD if line["kind"] == "number"]
    short = [{**numbers[0], "max_new_tokens": 24}, *[{**line, "max_new_tokens": 8} for line in numbers[1:]]]
    assert get_task(str(write(tmp_path / "short.jsonl", short))).max_new_tokens == 24
    mixed = [{**numbers[0], "max_new_tokens": 24}, *numbers[1:]]  # the other lines keep number's 128
    assert get_task(str(write(tmp_path / "mixed.jsonl", mixed))).max_new_tokens == 128


@pytest.mark.parametrize("bad", [0, -5, 40_000, "64", 1.5, True])
def test_a_bad_budget_names_the_line(tmp_path: Path, bad) -> None:
    path = write(tmp_path / "bad.jsonl", [GOOD[0], {**GOOD[1], "max_new_tokens": bad}])
    error = _error(path)
    assert "line 2: 'max_new_tokens' must be a whole number from 1 to 32768" in error.message
