"""Expert swap latency vs the time to generate 64 tokens, on the embedded model.

    python bench/swap.py [--expert NAME] [--repeat 5]

Needs a registered expert (default: the first one); prints one table:
first application (composition of every adapted matrix), a cached switch, a restore, and
greedy generation of exactly 64 new tokens for one prompt; ratios are against generation.
The issue's goal: a swap <= 10% of the 64-token generation time.
"""

from __future__ import annotations

import argparse
import time

import torch
from rich.console import Console
from rich.table import Table


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expert", default=None)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    from t2cli.home import open_registry
    from t2cli.runtime.generation import render_prompt
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.expert import load_expert

    with open_registry() as registry:
        from sqlalchemy import select

        from registry.schema import Expert

        with registry.session(readonly=True) as session:
            name = args.expert or session.scalars(select(Expert.name).order_by(Expert.id)).first()
        if name is None:
            raise SystemExit("no expert registered: train one first (t2 train --task addition)")
        expert = load_expert(registry, name)
        adaptable = load_adaptable(registry, None, targets=expert.config.targets, device="cpu")
    svf, model, tok = adaptable.svf, adaptable.model, adaptable.tokenizer
    prompt = render_prompt(tok, "Write a short story about a robot who learns to paint.")
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)

    def generate64() -> None:
        with torch.no_grad():
            model.generate(**enc, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id)

    def first_apply() -> None:
        svf.forget(name)
        svf.apply(expert.z, key=name)

    def cached_switch() -> None:
        svf.restore()
        svf.apply(expert.z, key=name)

    generate64()  # warm-up
    gen = _best(generate64, args.repeat)
    compose = _best(first_apply, args.repeat)
    switch = _best(cached_switch, args.repeat * 20)
    restore = _best(svf.restore, args.repeat * 20)
    svf.apply(expert.z, key=name)
    gen_adapted = _best(generate64, args.repeat)
    svf.restore()

    table = Table(title=f"swap latency, expert {name}, {len(expert.z)} matrices, {torch.get_num_threads()} threads")
    for column in ("operation", "seconds", "vs 64-token generation"):
        table.add_column(column, justify="right" if column != "operation" else "left")
    for label, seconds in (
        ("generate 64 tokens (base)", gen),
        ("generate 64 tokens (adapted)", gen_adapted),
        ("apply expert, first time (compose all W')", compose),
        ("switch to a cached expert", switch),
        ("restore base weights", restore),
    ):
        table.add_row(label, f"{seconds:.4f}", f"{seconds / gen:.1%}")
    Console().print(table)


if __name__ == "__main__":
    main()
