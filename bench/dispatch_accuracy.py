"""Pass-1 classification accuracy of `t2 ask`'s strategies on the labelled `dispatch` test split.

    python bench/dispatch_accuracy.py [--strategies prompt,classifier,prompt/score,classifier/score] [--limit N]

Needs category experts (and a `dispatch` expert for `classifier`) on the embedded model in
$T2_HOME. The `dispatch` task's test split holds prompts of the category experts' own tasks,
labelled with their category (up to 50 per category, drawn with a fixed seed from each
source task's test split). Each item's original question is given to the strategy exactly
as `t2 ask` would get it; the table shows, per strategy, how often pass 1 named the right
category, the share that fell back to the base weights, and the median pass-1 time.
`STRATEGY/score` runs pass 1 with `--pass1 score`.

`t2 eval --task dispatch --base|--expert E` measures the generated answers to the same
classification prompts with the task's scorer; this bench goes through the real pass-1 code.
"""

from __future__ import annotations

import argparse
import statistics

from rich.console import Console
from rich.table import Table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="prompt,classifier,prompt/score,classifier/score")
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()

    from t2cli.ask.engine import Asker, AskSettings
    from t2cli.eval.accuracy import wilson_interval
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task
    from t2cli.tasks.dispatch_task import OTHER, dispatch_task

    table = Table(title="pass-1 category accuracy on the dispatch test split")
    for column in ("strategy", "n", "right category", "95% CI", "base fallback", "median pass 1 s"):
        table.add_column(column, justify="left" if column == "strategy" else "right")
    with open_registry() as registry:
        adaptable = load_adaptable(registry, None, device="cpu")
        task = dispatch_task(registry, adaptable.base_model_id)
        items = task.split("test")[: args.limit] if args.limit else task.split("test")
        sources = {
            name: {item.id: item.prompt for split in ("test",) for item in get_task(name).split(split)}
            for name in {item.meta["source_task"] for item in items}
        }
        questions = [(sources[item.meta["source_task"]][item.id.split("/", 3)[3]], item.answer) for item in items]
        for label in args.strategies.split(","):
            strategy, _, pass1 = label.partition("/")
            asker = Asker(registry, AskSettings(strategy=strategy, pass1=pass1 or "generate"), adaptable=adaptable)
            right = fallback = 0
            seconds = []
            for question, category in questions:
                decision = asker.dispatch(question)
                seconds.append(decision.seconds)
                right += decision.category == category
                fallback += decision.category in (None, OTHER)
            low, high = wilson_interval(right, len(questions))
            table.add_row(
                label,
                str(len(questions)),
                f"{right / len(questions):.1%}",
                f"[{low:.1%}, {high:.1%}]",
                f"{fallback / len(questions):.1%}",
                f"{statistics.median(seconds):.2f}",
            )
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
