"""Two-pass overhead of `t2 ask`: pass 1 (choosing z) against a 64-token answer, per strategy.

    python bench/two_pass.py [--strategies prompt,classifier,prompt/score,classifier/score] [--per-task 4]
                             [--tasks addition,arithmetic,arc-easy]

Needs category experts (and, for `classifier`, a dispatch expert) registered for the embedded
model in $T2_HOME. For each strategy and each test prompt (the first --per-task test items of
each task), it times, on the same loaded model as `t2 ask` does:

* pass 1: the strategy's decision (`Asker.dispatch`), the classifier's z switch included;
  `STRATEGY/score` runs it with `--pass1 score` (one prefill) instead of generating;
* the switch: applying the chosen z (the first use of an expert composes its W'; later uses
  hit the cache, as they do inside one `t2 ask -f` run);
* pass 2: greedy generation of exactly 64 new tokens with the chosen weights.

It prints the median of each and the ratio pass 1 / (pass 1 + switch + pass 2), the
quantity the issue's goal (<= 15%) is about, plus the first (uncached) switch on its own.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from rich.console import Console
from rich.table import Table

ANSWER_TOKENS = 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", default="prompt,classifier,prompt/score,classifier/score")
    parser.add_argument("--tasks", default="addition,arithmetic,arc-easy")
    parser.add_argument("--per-task", type=int, default=4)
    args = parser.parse_args()

    from t2cli.ask.engine import Asker, AskSettings
    from t2cli.home import open_registry
    from t2cli.runtime.generation import render_prompt
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.tasks import get_task

    prompts = [item.prompt for name in args.tasks.split(",") for item in get_task(name).split("test")[: args.per_task]]
    console = Console(width=140)
    table = Table(
        title=f"two-pass overhead, {len(prompts)} prompts, {ANSWER_TOKENS}-token answers, "
        f"{torch.get_num_threads()} threads (medians)"
    )
    for column in ("strategy", "pass 1 s", "switch s", "pass 2 s", "pass 1 / total", "first switch s", "choices"):
        table.add_column(column, justify="left" if column in ("strategy", "choices") else "right")
    with open_registry() as registry:
        adaptable = load_adaptable(registry, None, device="cpu")
        model, tokenizer, svf = adaptable.model, adaptable.tokenizer, adaptable.svf
        for label in args.strategies.split(","):
            strategy, _, pass1 = label.partition("/")
            settings = AskSettings(strategy=strategy, max_new_tokens=ANSWER_TOKENS, pass1=pass1 or "generate")
            asker = Asker(registry, settings, adaptable=adaptable)
            pass1, switch, pass2, first_switch, choices = [], [], [], [], {}
            for prompt in prompts:
                decision = asker.dispatch(prompt)
                start = time.perf_counter()
                cached = asker.apply_decision(decision)
                (switch if cached else first_switch).append(time.perf_counter() - start)
                enc = tokenizer(render_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
                start = time.perf_counter()
                with torch.no_grad():
                    model.generate(
                        **enc,
                        max_new_tokens=ANSWER_TOKENS,
                        min_new_tokens=ANSWER_TOKENS,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                pass2.append(time.perf_counter() - start)
                svf.restore()
                pass1.append(decision.seconds)
                choices[decision.choice] = choices.get(decision.choice, 0) + 1
            p1, sw, p2 = (statistics.median(xs) if xs else 0.0 for xs in (pass1, switch, pass2))
            table.add_row(
                label,
                f"{p1:.3f}",
                f"{sw:.4f}",
                f"{p2:.3f}",
                f"{p1 / (p1 + sw + p2):.1%}",
                f"{statistics.median(first_switch):.3f}" if first_switch else "-",
                ", ".join(f"{name} {count}" for name, count in sorted(choices.items())),
            )
    console.print(table)


if __name__ == "__main__":
    main()
