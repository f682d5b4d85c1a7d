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
from pathlib import Path

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="router,prompt,classifier,prompt/score,classifier/score")
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--handwritten", default=str(Path(__file__).parent / "data" / "dispatch_handwritten.jsonl"))
    args = parser.parse_args()

    from t2cli.ask.engine import Asker, AskSettings
    from t2cli.eval.accuracy import wilson_interval
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.tasks.dispatch_task import OTHER, category_experts, dispatch_task

    table = Table(title="pass-1 category accuracy")
    for column in ("strategy", "set", "n", "right category", "95% CI", "base fallback", "median pass 1 s"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    with open_registry() as registry:
        adaptable = load_adaptable(registry, None, device="cpu")
        task = dispatch_task(registry, adaptable.base_model_id)
        items = task.split("test")[: args.limit] if args.limit else task.split("test")
        sources = {
            name: {item.id: item.prompt for split in ("test",) for item in get_task(name).split(split)}
            for name in {item.meta["source_task"] for item in items}
        }
        sets = {
            "dispatch test": [
                (sources[item.meta["source_task"]][item.id.split("/", 3)[3]], item.answer) for item in items
            ]
        }
        offered = {e.category for e in category_experts(registry, adaptable.base_model_id)}
        if args.handwritten:
            rows = [json.loads(line) for line in Path(args.handwritten).read_text().splitlines() if line.strip()]
            sets["hand-written"] = [(r["prompt"], r["label"] if r["label"] in offered else OTHER) for r in rows]
        for label in args.strategies.split(","):
            strategy, _, pass1 = label.partition("/")
            asker = Asker(registry, AskSettings(strategy=strategy, pass1=pass1 or "generate"), adaptable=adaptable)
            for set_name, questions in sets.items():
                right = fallback = 0
                seconds = []
                for question, category in questions:
                    decision = asker.dispatch(question)
                    seconds.append(decision.seconds)
                    right += (decision.category or OTHER) == category
                    fallback += decision.category in (None, OTHER)
                low, high = wilson_interval(right, len(questions))
                table.add_row(
                    label,
                    set_name,
                    str(len(questions)),
                    f"{right / len(questions):.1%}",
                    f"[{low:.1%}, {high:.1%}]",
                    f"{fallback / len(questions):.1%}",
                    f"{statistics.median(seconds):.3f}",
                )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
