"""Each scorer on hand-written right and wrong answers, the tricky cases included."""

from __future__ import annotations

import pytest

from t2cli.tasks import TaskError
from t2cli.tasks.scorers import (
    build_program,
    extract_choice,
    extract_code,
    extract_math_answer,
    get_scorer,
    last_boxed,
    math_equal,
    normalize_math,
    reference_completion,
    scorer_kinds,
)
from t2cli.tasks.types import Task, TaskItem

ARC_CHOICES = ["cellular telephone", "television", "refrigerator", "airplane"]


def score(kind: str, completion: str, answer: str, **meta):
    return get_scorer(kind)(completion, answer, **meta)


# --- number ---


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("The answer is 18.", "18"),
        ("16 - 3 - 4 = 9 eggs, 9 * 2 = $18\nAnswer: 18", "18"),
        ("She makes $1,234 in total.", "1234"),
        ("Answer: 1,234", "1,234"),
        ("Answer: $18.00", "18"),
        ("The temperature drops to -5 degrees.", "-5"),
        ("x = 18.0", "18"),
        ("It costs 0.5 dollars", "0.5"),
    ],
)
def test_number_right(completion: str, gold: str) -> None:
    result = score("number", completion, gold)
    assert result.correct, result


@pytest.mark.parametrize(
    "completion, gold, extracted",
    [
        ("18 eggs and 20 ducks", "18", "20"),  # the last number counts, not the first
        ("Answer: 17", "18", "17"),
        ("Answer: 18.5", "18", "18.5"),
        ("The answer is 1,2,3", "123", "3"),  # not a thousands separator
        ("I do not know.", "18", None),
    ],
)
def test_number_wrong(completion: str, gold: str, extracted: str | None) -> None:
    result = score("number", completion, gold)
    assert not result.correct
    assert result.extracted == extracted


def test_number_gold_must_be_a_number() -> None:
    with pytest.raises(TaskError, match="not a number"):
        score("number", "18", "eighteen")


# --- choice ---


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("Option A is wrong, and B does not fit either.\nAnswer: C", "C"),
        ("The answer is (B).", "B"),
        ("The correct answer is: D", "D"),
        ("**Answer: B**", "B"),
        ("So we get \\boxed{A}.", "A"),
        ("B", "B"),
        ("Let me think.\n(C)\n", "C"),
        ("D.", "D"),
        ("B. television, because it came after the others", "B"),
        ("television", "B"),  # the completion is exactly one choice's text
        ("Answer: A\nWait, no. Answer: D", "D"),  # the last explicit answer wins
    ],
)
def test_choice_right(completion: str, gold: str) -> None:
    result = score("choice", completion, gold, choices=ARC_CHOICES)
    assert result.correct, result
    assert result.extracted == gold


@pytest.mark.parametrize(
    "completion",
    [
        "I think A and B are both plausible.",  # mentions letters but chooses none
        "A bird is an animal.",  # the article "A" is not a choice
        "The answer is the refrigerator-ish one",
        "Answer: E",  # not one of the four choices
        "",
    ],
)
def test_choice_never_guesses(completion: str) -> None:
    result = score("choice", completion, "C", choices=ARC_CHOICES)
    assert not result.correct
    assert result.extracted is None


def test_choice_wrong_letter() -> None:
    result = score("choice", "Answer: C", "A", choices=ARC_CHOICES)
    assert not result.correct and result.extracted == "C"


def test_choice_without_choice_texts_accepts_any_letter() -> None:
    assert extract_choice("Answer: F") == "F"
    assert extract_choice("answer: nothing here") is None


# --- exact and regex ---


def test_exact() -> None:
    assert score("exact", "  PARIS\n", "Paris").correct
    assert score("exact", "Let me think.\nNew   York", "new york").correct  # last line, spacing collapsed
    assert not score("exact", "Paris, France", "Paris").correct
    assert not score("exact", "", "Paris").correct


def test_regex() -> None:
    assert score("regex", "42", r"\d+").correct
    assert score("regex", "Working...\n  -17  ", r"-?\d+").correct  # last line
    assert not score("regex", "The result is 42", r"\d+").correct  # fullmatch, not search
    with pytest.raises(TaskError, match="not a valid regular expression"):
        score("regex", "42", r"(\d+")


# --- math ---


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("so the result is \\boxed{\\frac{1}{2}}", "0.5"),
        ("\\boxed{0.5}", "\\frac{1}{2}"),
        ("\\boxed{\\dfrac{3}{4}}", "\\frac34"),
        ("\\boxed{1/2}", "\\frac{1}{2}"),
        ("\\boxed{x = 5}", "5"),
        ("\\boxed{90^\\circ}", "90"),
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{10,\\!080}", "10080"),
        ("\\boxed{\\$18.90}", "18.90"),
        ("\\boxed{5.4 \\text{ cents}}", "5.4"),
        ("\\boxed{\\text{(C)}}", "C"),
        ("\\boxed{11\\sqrt2}", "11\\sqrt{2}"),
        ("\\boxed{2\\frac{1}{2}}", "\\frac{5}{2}"),  # mixed number
        (
            "First \\boxed{3}, then correcting: \\boxed{\\frac{a}{\\sqrt{b}}}",
            "\\frac{a}{\\sqrt{b}}",
        ),  # nested braces, last box
        ("The final answer is $[2,5)$. I hope it is correct.", "[2,5)"),
        ("Therefore, the answer is 7.", "7"),
    ],
)
def test_math_right(completion: str, gold: str) -> None:
    result = score("math", completion, gold)
    assert result.correct, result


@pytest.mark.parametrize(
    "completion, gold",
    [
        ("\\boxed{\\frac{1}{3}}", "0.5"),
        ("\\boxed{0.3333}", "\\frac{1}{3}"),  # not within 1e-6
        ("\\boxed{(3, \\pi)}", "(3,\\frac{\\pi}{2})"),
        ("\\boxed{x^2+1}", "x^2-1"),
        ("The result is 1/2 probably", "\\frac{1}{2}"),  # no box, no "answer is"
        ("\\boxed{\\frac{1}{2", "\\frac{1}{2}"),  # cut off: unbalanced
    ],
)
def test_math_wrong(completion: str, gold: str) -> None:
    assert not score("math", completion, gold).correct


def test_math_helpers() -> None:
    assert last_boxed("\\boxed{a} and \\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed 5") == "5"
    assert extract_math_answer("no answer here") is None
    assert normalize_math("\\left( \\frac43, 2 \\right)") == "(\\frac{4}{3},2)"
    assert math_equal("\\frac{2}{4}", "0.5") and not math_equal("\\frac{1}{0}", "0")


# --- python_tests ---


def test_extract_code_takes_the_last_python_block() -> None:
    completion = "Here:\n```python\ndef f():\n    return 1\n```\nBetter:\n```python\ndef f():\n    return 2\n```\nDone."
    assert extract_code(completion) == "def f():\n    return 2\n"
    assert extract_code("```python\ndef f():\n    return 3") == "def f():\n    return 3"  # cut off at the end
    assert extract_code("def f():\n    return 4") == "def f():\n    return 4"  # no fence at all
    assert extract_code("```\nx = 1\n```") == "x = 1\n"


def test_build_program_continues_an_indented_body() -> None:
    header = "def add(a, b):\n    '''Add.'''\n"
    assert build_program("    return a + b\n", ["assert add(1, 2) == 3"], prefix=header).startswith(
        header + "    return"
    )
    program = build_program("def add(a, b):\n    return a + b", ["assert add(1, 2) == 3"], setup="X = 1", prefix=header)
    assert program.index("X = 1") > program.index("return a + b")


def test_python_tests_right_and_wrong() -> None:
    tests = ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"]
    right = "Sure:\n```python\ndef add(a, b):\n    return a + b\n```"
    wrong = "```python\ndef add(a, b):\n    return a - b\n```"
    result = score("python_tests", right, "", tests=tests)
    assert result.correct and "return a + b" in result.extracted
    result = score("python_tests", wrong, "", tests=tests)
    assert not result.correct and "AssertionError" in result.reason
    assert not score("python_tests", "", "", tests=tests).correct


def test_python_tests_loop_is_a_failure() -> None:
    result = score(
        "python_tests",
        "```python\ndef add(a, b):\n    while True:\n        pass\n```",
        "",
        tests=["assert add(1, 2) == 3"],
        timeout_s=1.0,
    )
    assert not result.correct and "timed out" in result.reason


# --- registry ---


def test_unknown_kind_lists_the_valid_ones() -> None:
    with pytest.raises(TaskError) as info:
        get_scorer("fuzzy")
    assert "fuzzy" in info.value.message
    for kind in ("number", "choice", "exact", "regex", "math", "python_tests"):
        assert kind in info.value.hint
    assert set(scorer_kinds()) >= {"number", "choice", "exact", "regex", "math", "python_tests"}


def test_reference_completions_score_correct() -> None:
    assert score("number", reference_completion("number", "18"), "18").correct
    assert score("choice", reference_completion("choice", "B"), "B", choices=ARC_CHOICES).correct
    assert score("math", reference_completion("math", "\\frac{1}{2}"), "\\frac{1}{2}").correct
    assert reference_completion("regex", r"\d+") is None


# --- Task.prompts / Task.correct: what evaluation, training and CEM call ---


class _QuizTask(Task):
    name = "quiz"
    system_prompt = "Reply with the number only."

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        items = [
            TaskItem(id=f"q{n}", prompt=f"What is {n} + {n}?", answer=str(2 * n), kind="number") for n in (1, 2, 3)
        ]
        return {"train": items, "valid": [], "test": []}


def test_task_prompts_carry_the_system_prompt_and_each_question(tiny_llama) -> None:
    from transformers import AutoTokenizer

    from t2cli.runtime.generation import render_prompt

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama)
    task = _QuizTask()
    items = task.split("train")
    prompts = task.prompts(tokenizer, items)
    assert prompts == [render_prompt(tokenizer, item.prompt, task.system_prompt) for item in items]
    for item, prompt in zip(items, prompts):
        assert task.system_prompt in prompt and item.prompt in prompt
        assert prompt.index(task.system_prompt) < prompt.index(item.prompt)


def test_task_correct_is_the_score_batch_verdict_in_order() -> None:
    task = _QuizTask()
    items = task.split("train")
    assert task.correct(items, ["Answer: 2", "I don't know", "6"]) == [True, False, True]
    assert task.correct(list(reversed(items)), ["Answer: 2", "I don't know", "6"]) == [False, False, False]
    with pytest.raises(ValueError):
        task.correct(items, ["2"])
