"""Custom tasks from a JSON-lines file: ``t2 ... --task path/to/file.jsonl``.

One JSON object per line:

    {"prompt": "What is 2 + 2?", "answer": "4", "kind": "number"}
    {"prompt": "Capital of France?", "answer": "B", "kind": "choice", "choices": ["Rome", "Paris"]}
    {"prompt": "Write add(a, b).", "answer": "", "kind": "python_tests", "tests": ["assert add(1, 2) == 3"]}

Required: ``prompt``, ``answer``, ``kind`` (a scorer: number, choice, exact,
regex, math, python_tests). Optional: ``id``, ``split`` (train/valid/test: all
lines or none), ``choices`` (choice; named: the candidate answers, required), ``tests`` and ``setup`` (python_tests),
``max_new_tokens`` (this item's generation budget), ``image`` (a path relative to the
file, or a list of them: shown with the prompt, checked when the file loads, see
``t2cli.tasks.images``). Other fields are ignored.
The task's generation budget is the largest budget of its items: an item's
``max_new_tokens``, else its kind's default (``DEFAULT_BUDGETS``). Without splits, items are split 60/20/20 with a fixed
seed (at least one test item). Blank lines are skipped; a line may be at most
1 MB. The task's name is the file's stem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from t2cli.tasks.images import resolve_image
from t2cli.tasks.scorers import parse_number, scorer_kinds
from t2cli.tasks.types import SPLITS, ItemImage, Task, TaskError, TaskItem, seeded_split

MAX_LINE_BYTES = 1_000_000
_REQUIRED = ("prompt", "answer", "kind")
MAX_BUDGET = 32_768
# Tokens generated per answer unless the file says otherwise: room for a short working and the
# answer, not the 512 of a chain-of-thought benchmark (a wrong rollout runs to the budget).
DEFAULT_BUDGETS = {
    "number": 128, "choice": 128, "exact": 64, "named": 64, "regex": 64, "math": 512, "python_tests": 512,
}  # fmt: skip
FALLBACK_BUDGET = 256  # a kind registered later without a default


class JsonlTask(Task):
    """A task whose items were read from a JSON-lines file."""

    category = "custom"

    def __init__(self, path: Path, splits: dict[str, list[TaskItem]], max_new_tokens: int = FALLBACK_BUDGET) -> None:
        super().__init__()
        self.max_new_tokens = max_new_tokens
        self.name = path.stem
        self.description = f"custom task from {path}"
        self.source = str(path)
        self.path = path
        self._prebuilt = splits

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        return self._prebuilt


def load_task_file(path: Path) -> JsonlTask:
    """Read and validate a task file; TaskError naming the file and line for anything malformed."""
    if not path.is_file():
        problem = "is not a file" if path.exists() else "does not exist"
        raise TaskError(f"task file {path} {problem}", hint="give a path to a .jsonl file or a task name")
    records = [(line_no, _item_fields(path, line_no, obj)) for line_no, obj in _read_objects(path)]
    if not records:
        raise TaskError(
            f"task file {path} has no items",
            hint='write one JSON object per line, e.g. {"prompt": "What is 2 + 2?", "answer": "4", "kind": "number"}',
        )
    ids: dict[str, int] = {}  # item id -> the line that used it first
    for line_no, fields in records:
        if fields["id"] in ids:
            raise TaskError(f"{path} line {line_no}: id '{fields['id']}' was already used on line {ids[fields['id']]}")
        ids[fields["id"]] = line_no
    named = [line_no for line_no, fields in records if fields["split"] is not None]
    if named and len(named) != len(records):
        missing = next(line_no for line_no, fields in records if fields["split"] is None)
        raise TaskError(
            f'{path} line {missing}: no "split", but other lines name one',
            hint="give every line a split (train, valid or test) or none of them",
        )
    if named:
        parts = {split: [r for r in records if r[1]["split"] == split] for split in SPLITS}
    else:
        n = len(records)
        n_test = max(1, round(0.2 * n))
        n_valid = min(round(0.2 * n), n - n_test)
        parts = seeded_split(
            records, {"test": n_test, "valid": n_valid}, f"custom:{path.stem}", key=lambda r: r[1]["id"]
        )
    splits = {split: [_make_item(path.stem, split, fields) for _, fields in part] for split, part in parts.items()}
    return JsonlTask(path, splits, max(fields["budget"] for _, fields in records))


def _read_objects(path: Path):
    """Yield (line number, parsed JSON value) for every non-blank line."""
    with open(path, "rb") as f:
        line_no = 0
        while True:
            raw = f.readline(MAX_LINE_BYTES + 2)  # + newline + one byte: enough to tell a line is too long
            if not raw:
                return
            line_no += 1
            content = raw.rstrip(b"\r\n")
            if len(content) > MAX_LINE_BYTES:
                raise TaskError(
                    f"{path} line {line_no} is longer than the 1 MB limit for one item",
                    hint="shorten the item or split the file into smaller items",
                )
            if line_no == 1 and content.startswith(b"\xef\xbb\xbf"):
                content = content[3:]  # a UTF-8 byte-order mark, as some editors write
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise TaskError(
                    f"{path} line {line_no} is not valid UTF-8 (byte 0x{content[exc.start]:02x} at column {exc.start + 1})",
                    hint="save the file as UTF-8",
                ) from None
            if not text.strip():
                continue
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as exc:
                raise TaskError(
                    f"{path} line {line_no} is not valid JSON: {exc.msg} (column {exc.colno})",
                    hint="write one complete JSON object per line",
                ) from None


def _item_fields(path: Path, line_no: int, obj: object) -> dict:
    """The validated fields of one line."""
    where = f"{path} line {line_no}"
    if not isinstance(obj, dict):
        raise TaskError(
            f"{where}: expected a JSON object, got {type(obj).__name__}", hint="write one {...} object per line"
        )
    for name in _REQUIRED:
        if name not in obj:
            raise TaskError(f"{where}: missing field '{name}'", hint="every line needs prompt, answer and kind")
    kind, prompt, answer = obj["kind"], obj["prompt"], obj["answer"]
    if kind not in scorer_kinds():
        raise TaskError(f"{where}: unknown kind {kind!r}", hint=f"use one of: {', '.join(scorer_kinds())}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise TaskError(f"{where}: 'prompt' must be a non-empty string")
    if isinstance(answer, (int, float)) and not isinstance(answer, bool) and kind == "number":
        answer = str(answer)
    if not isinstance(answer, str):
        raise TaskError(f"{where}: 'answer' must be a string, got {type(answer).__name__}")
    meta: dict = {}
    if kind == "number" and parse_number(answer) is None:
        raise TaskError(
            f"{where}: answer {answer!r} is not a number", hint="number answers look like 18, -3.5 or 1,234"
        )
    if kind in ("exact", "math") and not answer.strip():
        raise TaskError(f"{where}: 'answer' is empty")
    if kind == "regex":
        try:
            re.compile(answer)
        except re.error as exc:
            raise TaskError(f"{where}: answer {answer!r} is not a valid regular expression: {exc}") from None
    if kind == "choice":
        meta.update(_choice_fields(where, obj, answer))
        answer = answer.strip().upper()
    if kind == "named":
        meta.update(_named_fields(where, obj, answer))
    if kind == "python_tests":
        tests, setup = obj.get("tests"), obj.get("setup", "")
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise TaskError(f"{where}: python_tests needs 'tests', a non-empty list of strings (e.g. asserts)")
        if not isinstance(setup, str):
            raise TaskError(f"{where}: 'setup' must be a string of Python code")
        meta.update(tests=tests, setup=setup)
    split = obj.get("split")
    if split is not None and split not in SPLITS:
        raise TaskError(f"{where}: unknown split {split!r}", hint=f"use one of: {', '.join(SPLITS)}")
    item_id = obj.get("id", f"line{line_no}")
    if not isinstance(item_id, (str, int)) or isinstance(item_id, bool) or str(item_id).strip() == "":
        raise TaskError(f"{where}: 'id' must be a non-empty string")
    budget = obj.get("max_new_tokens", DEFAULT_BUDGETS.get(kind, FALLBACK_BUDGET))
    if not isinstance(budget, int) or isinstance(budget, bool) or not 1 <= budget <= MAX_BUDGET:
        raise TaskError(f"{where}: 'max_new_tokens' must be a whole number from 1 to {MAX_BUDGET}, got {budget!r}")
    images: tuple[ItemImage, ...] = resolve_image(path, where, obj["image"]) if "image" in obj else ()
    return {
        "prompt": prompt,
        "answer": answer,
        "kind": kind,
        "meta": meta,
        "split": split,
        "id": str(item_id),
        "budget": budget,
        "images": images,
    }


def _choice_fields(where: str, obj: dict, answer: str) -> dict:
    letter = answer.strip().upper()
    if len(letter) != 1 or not "A" <= letter <= "Z":
        raise TaskError(f"{where}: a choice answer must be one letter A-Z, got {answer!r}")
    choices = obj.get("choices")
    if choices is None:
        return {}
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices):
        raise TaskError(f"{where}: 'choices' must be a non-empty list of strings")
    if ord(letter) - ord("A") >= len(choices):
        raise TaskError(f"{where}: answer {letter} is beyond the {len(choices)} choices")
    return {"choices": choices}


def _named_fields(where: str, obj: dict, answer: str) -> dict:
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices or not all(isinstance(c, str) and c.strip() for c in choices):
        raise TaskError(f"{where}: a named item needs 'choices', a non-empty list of the candidate answers")
    if answer.casefold() not in {c.casefold() for c in choices}:
        raise TaskError(f"{where}: answer {answer!r} is not one of its choices")
    return {"choices": choices}


def _make_item(task: str, split: str, fields: dict) -> TaskItem:
    return TaskItem(
        id=f"{task}/{split}/{fields['id']}",
        prompt=fields["prompt"],
        answer=fields["answer"],
        kind=fields["kind"],
        meta=fields["meta"],
        images=fields["images"],
    )
