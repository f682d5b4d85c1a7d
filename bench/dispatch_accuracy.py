"""Pass-1 classification accuracy of `t2 ask`'s strategies on the `dispatch` test split and hand-written prompts.

    python bench/dispatch_accuracy.py [--strategies router,prompt,classifier,prompt/score,classifier/score]
        [--limit N] [--handwritten bench/data/dispatch_handwritten.jsonl]

Needs category experts (and a `dispatch` expert for `classifier`) on the embedded model in
$T2_HOME. The `dispatch` task's test split holds prompts of the category experts' own tasks,
labelled with their category (up to 50 per category, drawn with a fixed seed from each
source task's test split). Each item's original question is given to the strategy exactly
as `t2 ask` would get it; the table shows, per strategy, how often pass 1 named the right
category, the share that fell back to the base weights, and the median pass-1 time.
`STRATEGY/score` runs pass 1 with `--pass1 score`.

The hand-written set (64 prompts written for this project, 16 each of math, code, reasoning
and other; none is drawn from a task source) is scored against the categories the registered
experts offer: a prompt whose class has no expert (code, when no code expert is registered)
is right when pass 1 sends it to the base weights (`other`).

`t2 eval --task dispatch --base|--expert E` measures the generated answers to the same
classification prompts with the task's scorer; this bench goes through the real pass-1 code.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from t2cli.ask.engine import Asker, AskSettings
from t2cli.eval.accuracy import wilson_interval
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.tasks.dispatch_task import OTHER, category_experts, dispatch_task

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.ask.strategies import Dispatch

HANDWRITTEN = Path(__file__).parent / "data" / "dispatch_handwritten.jsonl"

Question = tuple[str, str]  # (the prompt as a user would give it, the category pass 1 should name)


def expected_category(label: str, offered: Collection[str]) -> str:
    """The category a prompt labelled ``label`` should go to: itself when an expert offers it, else ``other``.

    The one rule for a class without an expert (code, when no code expert is registered): the
    right pass 1 sends the prompt to the base weights.
    """
    return label if label in offered else OTHER


def dispatched_category(decision: Dispatch) -> str:
    """The category pass 1 chose; nothing readable (None) means the base weights, i.e. ``other``."""
    return decision.category or OTHER


def dispatch_test_questions(registry: Registry, base_model_id: int, limit: int | None = None) -> list[Question]:
    """The `dispatch` task's test split, each item given as its source task's original question."""
    task = dispatch_task(registry, base_model_id)
    items = task.split("test")[:limit] if limit else task.split("test")
    # The task objects the dispatch task drew from (a custom .jsonl task cannot be looked up again by its name).
    sources = {source.name: {item.id: item.prompt for item in source.split("test")} for _, _, source in task.sources}
    offered = set(task.categories)
    return [
        (sources[item.meta["source_task"]][item.id.split("/", 3)[3]], expected_category(item.answer, offered))
        for item in items
    ]


def handwritten_questions(path: Path, offered: Collection[str]) -> list[Question]:
    """The hand-written prompts of ``path`` (JSON lines with "prompt" and "label"), labels mapped to what is offered."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(row["prompt"], expected_category(row["label"], offered)) for row in rows]


def dispatch_sets(
    registry: Registry, base_model_id: int, *, limit: int | None = None, handwritten: Path | None = HANDWRITTEN
) -> dict[str, list[Question]]:
    """The question sets this bench scores: the `dispatch` test split and, when given, the hand-written file."""
    sets = {"dispatch test": dispatch_test_questions(registry, base_model_id, limit)}
    if handwritten:
        offered = {e.category for e in category_experts(registry, base_model_id)}
        sets["hand-written"] = handwritten_questions(handwritten, offered)
    return sets


@dataclass(frozen=True)
class DispatchScore:
    """How often one strategy's pass 1 named the right category on one set of questions."""

    n: int
    right: int
    fallback: int  # sent to the base weights
    seconds: tuple[float, ...]  # pass 1, per question

    @property
    def accuracy(self) -> float:
        return self.right / self.n if self.n else 0.0

    @property
    def median_seconds(self) -> float:
        return statistics.median(self.seconds) if self.seconds else 0.0


def score_dispatch(
    asker: Asker, questions: Sequence[Question], on_question: Callable[[], None] | None = None
) -> DispatchScore:
    """Run ``asker``'s real pass 1 on every question and count the right categories."""
    right = fallback = 0
    seconds = []
    for question, category in questions:
        decision = asker.dispatch(question)
        seconds.append(decision.seconds)
        chosen = dispatched_category(decision)
        right += chosen == category
        fallback += chosen == OTHER
        if on_question:
            on_question()
    return DispatchScore(len(questions), right, fallback, tuple(seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="router,prompt,classifier,prompt/score,classifier/score")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--handwritten", default=str(HANDWRITTEN))
    args = parser.parse_args()

    table = Table(title="pass-1 category accuracy")
    for column in ("strategy", "set", "n", "right category", "95% CI", "base fallback", "median pass 1 s"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    with open_registry() as registry:
        adaptable = load_adaptable(registry, None, device="cpu")
        sets = dispatch_sets(
            registry,
            adaptable.base_model_id,
            limit=args.limit,
            handwritten=Path(args.handwritten) if args.handwritten else None,
        )
        for label in args.strategies.split(","):
            strategy, _, pass1 = label.partition("/")
            asker = Asker(registry, AskSettings(strategy=strategy, pass1=pass1 or "generate"), adaptable=adaptable)
            for set_name, questions in sets.items():
                score = score_dispatch(asker, questions)
                low, high = wilson_interval(score.right, score.n)
                table.add_row(
                    label,
                    set_name,
                    str(score.n),
                    f"{score.accuracy:.1%}",
                    f"[{low:.1%}, {high:.1%}]",
                    f"{score.fallback / score.n:.1%}",
                    f"{score.median_seconds:.3f}",
                )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
