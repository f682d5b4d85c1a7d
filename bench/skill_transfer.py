"""Does an expert's lift reach arithmetic it was not trained on? Each expert against the base weights, paired.

    T2_HOME=... python bench/skill_transfer.py                      # every category expert of the embedded model
    T2_HOME=... python bench/skill_transfer.py --experts bank-addition,bank-types --n 100 --json out.json

Why: the Transformer-Squared table (bench/t2_table.py, docs/router.md) asks the router to beat every single
expert on tasks no expert was trained on. That needs experts whose lift on such tasks is specific to their
category. This script asks the narrowest form of the question: on sums and differences written exactly as the
math expert's `addition` task writes its questions ("What is a + b? Answer with the number only."), but with
three terms, three-digit terms or a minus sign, does the math expert lift accuracy, and do the other experts not?

Variants (generated, seeded, no overlap with `addition`'s two two-digit terms):
- ``sum3``: a + b + c, 10 <= a, b, c <= 99;
- ``add3digit``: a + b, 100 <= a, b <= 999;
- ``sub2``: a - b, 10 <= b < a <= 99.

Greedy answers, 16 new tokens, scored `number` (the last number of the answer). For each expert: accuracy with
its 95% Wilson interval, and the paired comparison with the base weights on the same items (gains, losses,
exact McNemar p; t2cli.eval.paired).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from t2cli.eval.accuracy import evaluate, wilson_interval
from t2cli.eval.paired import paired
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.svf.expert import load_expert
from t2cli.tasks import get_task
from t2cli.tasks.dispatch_task import category_experts

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # run as a script, Python puts bench/ on the path, not the checkout
from bench.reporting import machine_line, write_json  # noqa: E402

QUESTION = "What is {expression}? Answer with the number only."  # the `addition` task's wording
VARIANTS = ("sum3", "add3digit", "sub2")
MAX_NEW_TOKENS = 16


def variant_items(name: str, n: int, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct questions of variant ``name`` as custom-task lines (docs/tasks.md), all in the test split."""
    rng = random.Random(f"{name}/{seed}")
    seen: set[str] = set()
    lines = []
    while len(lines) < n:
        if name == "sum3":
            terms = [rng.randint(10, 99) for _ in range(3)]
            expression, value = " + ".join(map(str, terms)), sum(terms)
        elif name == "add3digit":
            a, b = rng.randint(100, 999), rng.randint(100, 999)
            expression, value = f"{a} + {b}", a + b
        elif name == "sub2":
            b = rng.randint(10, 98)
            a = rng.randint(b + 1, 99)
            expression, value = f"{a} - {b}", a - b
        else:
            raise ValueError(f"unknown variant {name!r}: one of {', '.join(VARIANTS)}")
        if expression in seen:
            continue
        seen.add(expression)
        lines.append(
            {
                "prompt": QUESTION.format(expression=expression),
                "answer": str(value),
                "kind": "number",
                "split": "test",
                "max_new_tokens": MAX_NEW_TOKENS,
            }
        )
    return lines


def write_variant(folder: Path, name: str, n: int, seed: int) -> Path:
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in variant_items(name, n, seed)))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="base model (default: the embedded one)")
    parser.add_argument("--experts", help="comma-separated expert names (default: every category expert)")
    parser.add_argument("--n", type=int, default=100, help="questions per variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)

    console = Console()
    results: dict[str, Any] = {"n": args.n, "seed": args.seed, "variants": {}}
    with open_registry() as registry, tempfile.TemporaryDirectory() as folder:
        adaptable = load_adaptable(registry, args.model, device="cpu")
        names = (
            args.experts.split(",")
            if args.experts
            else [e.expert for e in category_experts(registry, adaptable.base_model_id)]
        )
        if not names:
            console.print("error: no category expert of this model is registered: install the starter bank first")
            return 2
        results["machine"] = machine_line("cpu")
        for variant in VARIANTS:
            task = get_task(str(write_variant(Path(folder), variant, args.n, args.seed)))
            runs = {"base": evaluate(registry, adaptable, task, record=False, max_new_tokens=MAX_NEW_TOKENS)}
            for name in names:
                z = load_expert(registry, name).z
                runs[name] = evaluate(
                    registry, adaptable, task, expert=name, z=z, record=False, max_new_tokens=MAX_NEW_TOKENS
                )
            flags = {name: [s["correct"] for s in run.samples] for name, run in runs.items()}
            table = Table(title=f"{variant} (n = {args.n}): {task.split('test')[0].prompt}")
            for column in ("weights", "correct", "accuracy", "95% CI", "vs base: gains / losses", "McNemar p"):
                table.add_column(column)
            rows = {}
            for name, correct in flags.items():
                k = sum(correct)
                low, high = wilson_interval(k, len(correct))
                versus = paired(correct, flags["base"]) if name != "base" else None
                rows[name] = {
                    "correct": k,
                    "accuracy": k / len(correct),
                    "ci": [low, high],
                    **({"gains": versus.gains, "losses": versus.losses, "p": versus.p} if versus else {}),
                }
                table.add_row(
                    name,
                    str(k),
                    f"{k / len(correct):.1%}",
                    f"[{low:.1%}, {high:.1%}]",
                    f"{versus.gains} / {versus.losses}" if versus else "",
                    f"{versus.p:.2g}" if versus else "",
                )
            console.print(table)
            results["variants"][variant] = rows
    console.print(results["machine"])
    if args.json:
        write_json(args.json, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
