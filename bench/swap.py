"""Switching between two experts: t2's cache against recomposing on every switch, with generation for scale.

    python bench/swap.py [--model PATH] [--experts A,B] [--repeat 5] [--tokens 64]

Loads the model (default: the embedded SmolLM2-135M; decomposed on first use) and two
*different* experts A and B: the registered experts named by ``--experts`` (``load_expert``),
or two random ones built in memory (z = 1 + 0.1 N(0, 1) per singular value, seeds 0 and 1;
nothing is written to the registry). Every timed switch starts with A applied and ends
with B applied. Best of ``--repeat`` rounds:

* **baseline, recompose**: what the authors' code does on every switch: compose B's W' for
  every adapted matrix (t2's own composition, ``SVFModel.apply`` with B's cached weights dropped);
* **t2, cached**: the switch when B's composed weights are in ``SVFModel``'s cache (rebinding
  each target parameter, no arithmetic);
* **t2, restore**: back to the base weights from B;
* **a new mixture per prompt** (``router-soft``): z' = 0.6 A + 0.3 B + 0.1 * 1, composed anew
  from z' (a rank-r product per matrix) against t2's ``SVFModel.apply_mixture``, which sums
  A's and B's cached composed weights (W' is affine in z);
* greedy generation of exactly ``--tokens`` new tokens for one prompt, base and with B (in
  alternating rounds), for scale.

The price of the cache is memory: one composed copy of every adapted matrix per cached expert,
printed under the table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from rich.console import Console
from rich.table import Table


def _best(fn: Callable[[], object], repeat: int, setup: Callable[[], object] | None = None) -> float:
    """The fastest of ``repeat`` timed calls of ``fn``, each after an untimed ``setup``."""
    times = []
    for _ in range(repeat):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _ratio(value: float) -> str:
    """Two decimals, or two significant digits in scientific notation for what rounds to 0.00."""
    return f"{value:.2f}" if value >= 0.01 else f"{value:.1e}"


def random_expert(factors, seed: int) -> dict[str, torch.Tensor]:
    """z = 1 + 0.1 N(0, 1) for every singular value of every adapted matrix."""
    generator = torch.Generator().manual_seed(seed)
    return {
        name: (1.0 + 0.1 * torch.randn(f.S.shape, generator=generator)).to(f.S.device) for name, f in factors.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model path or alias (default: the embedded model)")
    parser.add_argument("--experts", default=None, help="two registered experts A,B (default: two random ones)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from t2cli.home import open_registry
    from t2cli.runtime.generation import render_prompt
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.expert import load_expert

    with open_registry() as registry:
        if args.experts:
            names = [name.strip() for name in args.experts.split(",")]
            if len(names) != 2 or names[0] == names[1]:
                raise SystemExit("--experts takes two different names: A,B")
            loaded = [load_expert(registry, name) for name in names]
            adaptable = load_adaptable(registry, args.model, targets=loaded[0].config.targets, device="cpu")
            experts = {name: expert.z for name, expert in zip(names, loaded)}
            source = "registered"
        else:
            adaptable = load_adaptable(registry, args.model, device="cpu")
            names = ["random-a", "random-b"]
            experts = {name: random_expert(adaptable.svf.factors, seed) for seed, name in enumerate(names)}
            source = "random, in memory"
    svf, model, tok = adaptable.svf, adaptable.model, adaptable.tokenizer
    (a, z_a), (b, z_b) = experts.items()
    prompt = render_prompt(tok, "Write a short story about a robot who learns to paint.")
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)

    def generate() -> None:
        with torch.no_grad():
            model.generate(
                **enc,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )

    def at_a_b_uncached() -> None:
        svf.apply(z_a, key=a)
        svf.forget(b)

    def at_a_both_cached() -> None:
        svf.apply(z_b, key=b)
        svf.apply(z_a, key=a)

    def at_b() -> None:
        svf.apply(z_b, key=b)

    generate()  # warm-up
    recompose = _best(lambda: svf.apply(z_b, key=b), args.repeat, setup=at_a_b_uncached)
    cached = _best(lambda: svf.apply(z_b, key=b), args.repeat * 20, setup=at_a_both_cached)
    restore = _best(svf.restore, args.repeat * 20, setup=at_b)
    z_mix = {name: 0.6 * z_a[name] + 0.3 * z_b[name] + 0.1 for name in z_a}
    mix_recompose = _best(lambda: svf.apply(z_mix), args.repeat, setup=at_a_both_cached)
    mix_cached = _best(
        lambda: svf.apply_mixture({a: (0.6, {}), b: (0.3, {})}, label="mix"), args.repeat * 4, setup=at_a_both_cached
    )
    # Base and adapted generation in alternating rounds, so that a busy machine slows both alike.
    gen_times: dict[bool, list[float]] = {False: [], True: []}
    for _ in range(args.repeat):
        for adapted in (False, True):
            if adapted:
                svf.apply(z_b, key=b)
            else:
                svf.restore()
            gen_times[adapted].append(_best(generate, 1))
    gen, gen_adapted = min(gen_times[False]), min(gen_times[True])
    composed = list(svf.composed(z_b).values())
    cache_bytes, dtype = sum(weight.numel() * weight.element_size() for weight in composed), composed[0].dtype
    del composed
    svf.restore()

    table = Table(
        title=f"switch {a} -> {b} ({source}), {len(z_b)} matrices, {torch.get_num_threads()} threads, "
        f"best of {args.repeat} (switches: {args.repeat * 20})"
    )
    for column in ("operation", "seconds", "vs baseline", f"vs {args.tokens}-token generation"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    rows = [
        ("baseline: switch A -> B, recompose every W'", recompose, True),
        ("t2: switch A -> B, B cached", cached, True),
        ("t2: restore base weights from B", restore, True),
        ("baseline: a new mixture 0.6 A + 0.3 B + 0.1 base, composed from z'", mix_recompose, True),
        ("t2: the same mixture summed from A's and B's cached W'", mix_cached, True),
        (f"generate {args.tokens} tokens (base)", gen, False),
        (f"generate {args.tokens} tokens (B applied)", gen_adapted, False),
    ]
    for label, seconds, is_switch in rows:
        ratio = _ratio(seconds / recompose) + "x" if is_switch else ""
        table.add_row(label, f"{seconds:.6f}", ratio, _ratio(100 * seconds / gen) + "%")
    console = Console(width=150)
    console.print(table)
    console.print(
        f"memory the cache holds per expert: {cache_bytes / 2**20:.1f} MiB "
        f"(one composed copy of the {len(z_b)} adapted matrices, {dtype})"
    )


if __name__ == "__main__":
    main()
