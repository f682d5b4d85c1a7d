"""Does the router start help CEM? `t2 adapt`'s search from the uniform mean and from the router's, side by side.

    T2_HOME=... python bench/cem_init.py --task arc-challenge [--experts A,B,C] [--router NAME]
        [--seeds 0,1,2] [--shots 10] [--population 8] [--generations 5] [--method linear] [--per-matrix]
        [--limit 200] [--max-new-tokens N] [--batch-size 16] [--model M] [--device cpu] [--threads N]
        [--json PATH]

Needs, for the model (`--model`, default the embedded SmolLM2-135M), two or more experts to mix
(`--experts`, default every non-mixture expert, as `t2 adapt` takes them) and a current learned
router (`t2 router train`) that routes to at least one of them.

For each seed: the shots are `--shots` items of the task's train split drawn with that seed
(`t2 adapt --task T --seed S` draws the same ones); CEM runs twice on them, with the same
seed (the same Gaussian noise), population and generations, once from `--init uniform`
(every weight 1/K, the paper) and once from `--init router` (the router's class probabilities
averaged over the shots; t2cli/adapt/start.py). Each run is `search_mixture`, the search
`t2 adapt` runs, with nothing registered. Reported per run: the starting mean, the few-shot
fitness of the starting mean itself, the best few-shot accuracy so far after each generation,
and the final mixture's accuracy on the first `--limit` test items (greedy, the task's answer
budget or `--max-new-tokens`, as `t2 eval` answers them). Then, on the same test items, router
start against uniform start per seed and over all seeds: gains / losses and the two-sided
exact McNemar p (`t2cli.eval.paired.paired`), and each final mixture against the base weights.
The pooled row counts every (seed, item) pair: the seeds share the test items, so its p is a
summary, not an independent test.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from t2cli.adapt.cem import (
    AdaptConfig,
    CEMConfig,
    FewShotScore,
    MixtureSearch,
    resolve_experts,
    search_mixture,
    select_shots,
)
from t2cli.adapt.start import usable_router
from t2cli.errors import T2Error
from t2cli.eval.accuracy import run_items, wilson_interval
from t2cli.eval.paired import Paired, paired
from t2cli.home import open_registry
from t2cli.svf.adaptable import load_adaptable
from t2cli.tasks import get_task

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # run as a script, Python puts bench/ on the path, not the checkout
from bench.reporting import machine_line, write_json  # noqa: E402

INITS = ("uniform", "router")
JSON_FORMAT = 1


@dataclass
class Arm:
    """One CEM run: a seed and a start, its search, and its final mixture on the test items."""

    seed: int
    init: str
    start: dict[str, Any]  # StartingMean.to_json()
    start_fitness: list[float]  # (accuracy, log-likelihood) of the starting mean on the shots
    generations: list[list[float]]  # best (accuracy, log-likelihood) so far after each generation
    fitness: list[float]  # the final mixture's, on the shots
    alphas: list[Any]
    test_correct: list[bool]
    seconds: float

    @property
    def test_accuracy(self) -> float:
        return sum(self.test_correct) / len(self.test_correct)


def _pair(score: FewShotScore | None) -> list[float]:
    return [] if score is None else [score.accuracy, score.loglik]


def run_arm(registry, adaptable, task, shots, test_items, experts, args, seed: int, init: str) -> Arm:
    """CEM from ``init`` on ``shots`` (seed ``seed``), then its best mixture on ``test_items``."""
    started = time.perf_counter()
    config = AdaptConfig(
        name="bench-cem-init",  # never registered
        task=task.name,
        method=args.method,
        per_matrix=args.per_matrix,
        cem=CEMConfig(population=args.population, generations=args.generations, seed=seed),
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        baselines=False,
        init=init,
        router=args.router if init == "router" else None,
    )
    search: MixtureSearch = search_mixture(registry, adaptable, task, shots, experts, config, score_start=True)
    correct, _, _, _ = run_items(
        adaptable, task, test_items, search.z, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
    )
    return Arm(
        seed=seed,
        init=init,
        start=search.start.to_json(),
        start_fitness=_pair(search.start_fitness),
        generations=[
            list(s.best_so_far) if isinstance(s.best_so_far, tuple) else [s.best_so_far] for s in search.history
        ],
        fitness=_pair(search.fitness),
        alphas=search.alpha.tolist(),
        test_correct=correct,
        seconds=time.perf_counter() - started,
    )


@dataclass(frozen=True)
class Comparison:
    """Router start against uniform start (or a mixture against the base weights) on the same test items."""

    label: str
    new: str
    old: str
    new_accuracy: float
    old_accuracy: float
    result: Paired


def compare(label: str, new: str, old: str, new_correct: Sequence[bool], old_correct: Sequence[bool]) -> Comparison:
    n = len(new_correct)
    return Comparison(
        label, new, old, sum(new_correct) / n, sum(old_correct) / n, paired(list(new_correct), list(old_correct))
    )


def comparisons(arms: Sequence[Arm], base_correct: Sequence[bool]) -> list[Comparison]:
    """Per seed: router vs uniform, then each against base; and router vs uniform over all seeds."""
    rows = []
    seeds = sorted({arm.seed for arm in arms})
    by = {(arm.seed, arm.init): arm for arm in arms}
    for seed in seeds:
        router, uniform = by[(seed, "router")], by[(seed, "uniform")]
        rows.append(compare(f"seed {seed}", "router", "uniform", router.test_correct, uniform.test_correct))
        for arm in (uniform, router):
            rows.append(compare(f"seed {seed}", arm.init, "base", arm.test_correct, base_correct))
    pooled = lambda init: [flag for seed in seeds for flag in by[(seed, init)].test_correct]
    rows.append(compare(f"all {len(seeds)} seeds (pooled)", "router", "uniform", pooled("router"), pooled("uniform")))
    return rows


# --------------------------------------------------------------------------- output


def _pct(value: float) -> str:
    return f"{value:.1%}"


def _start_text(start: dict[str, Any]) -> str:
    weights = ", ".join(f"{e} {w:.2f}" for e, w in zip(start["experts"], start["mean"]))
    return f"{weights}; base {start['base_share']:.2f}"


def runs_table(arms: Sequence[Arm], n_test: int) -> Table:
    table = Table(title=f"CEM runs: few-shot fitness and the final mixture on {n_test} test items")
    for column in ("seed", "start", "starting mean", "start acc", "best acc so far per generation", "final (shots)"):
        table.add_column(column, justify="left" if column in ("start", "starting mean") else "right")
    table.add_column("test accuracy [95% CI]", justify="right")
    for arm in arms:
        low, high = wilson_interval(sum(arm.test_correct), len(arm.test_correct))
        table.add_row(
            str(arm.seed),
            arm.init,
            _start_text(arm.start),
            _pct(arm.start_fitness[0]),
            " ".join(_pct(g[0]) for g in arm.generations),
            f"{_pct(arm.fitness[0])} ({arm.fitness[1]:.3f})",
            f"{_pct(arm.test_accuracy)} [{_pct(low)}, {_pct(high)}]",
        )
    return table


def paired_table(rows: Sequence[Comparison], base_accuracy: float) -> Table:
    table = Table(title=f"paired on the same test items (base weights {_pct(base_accuracy)})")
    for column in ("runs", "new vs old", "new", "old", "delta", "gains / losses", "McNemar p"):
        table.add_column(column, justify="left" if column in ("runs", "new vs old") else "right")
    for row in rows:
        p = row.result
        table.add_row(
            row.label,
            f"{row.new} vs {row.old}",
            _pct(row.new_accuracy),
            _pct(row.old_accuracy),
            f"{p.delta * 100:+.1f} pts",
            f"{p.gains} / {p.losses}",
            f"{p.p:.3g}",
        )
    return table


# --------------------------------------------------------------------------- the run


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True, help="the task to adapt to (shots: train split; scored: test split)")
    parser.add_argument("--experts", default=None, help="comma-separated experts to mix (default: as `t2 adapt`)")
    parser.add_argument("--router", default=None, help="the router (default: the latest of the model)")
    parser.add_argument("--model", default=None, help="the base model (default: the embedded SmolLM2-135M)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds: shots and CEM noise (default 0,1,2)")
    parser.add_argument("--shots", type=int, default=10, help="few-shot items per seed (default 10, as t2 adapt)")
    parser.add_argument("--population", type=int, default=8, help="candidates per generation (default 8)")
    parser.add_argument("--generations", type=int, default=5, help="CEM generations (default 5)")
    parser.add_argument("--method", default="linear", help="mixing method: linear (default) or task-arithmetic")
    parser.add_argument("--per-matrix", action="store_true", help="one weight per expert per matrix role")
    parser.add_argument("--limit", type=int, default=200, help="first N test items (default 200)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="answer budget (default: the task's)")
    parser.add_argument("--batch-size", type=int, default=16, help="generation batch (default 16)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="write every figure and per-item result here")
    args = parser.parse_args(argv)
    for option in ("shots", "population", "generations", "limit", "max_new_tokens", "batch_size", "threads"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1 (got {value})")
    try:
        args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds must be comma-separated integers (got {args.seeds!r})")
    if not args.seed_list or len(set(args.seed_list)) != len(args.seed_list):
        parser.error(f"--seeds must name distinct seeds (got {args.seeds!r})")
    return args


def measure(args: argparse.Namespace, console: Console) -> dict[str, Any]:
    """Both starts at every seed, the base weights once, on one loaded model; everything as plain data."""
    task = get_task(args.task)
    test_items = task.split("test")[: args.limit]
    if not test_items:
        raise T2Error(f"task {task.name} has no test items to score the mixtures on", "pick another --task")
    with open_registry() as registry:
        names = args.experts.split(",") if args.experts else None
        experts, model = resolve_experts(registry, names, args.model)
        expert_names = [e.name for e in experts]
        _, router = usable_router(
            registry, args.router, experts[0].base_model_id, model or "the embedded model", expert_names
        )
        console.print(
            f"task {task.name}: {args.shots} shots x seeds {args.seeds}, {len(test_items)} test items; experts "
            f"{', '.join(expert_names)}; router {router.config.name}; CEM {args.population} x {args.generations}, "
            f"{args.method}{', per matrix' if args.per_matrix else ''}",
            highlight=False,
        )
        adaptable = load_adaptable(registry, model, targets=experts[0].config.targets, device=args.device)
        base_correct, _, _, _ = run_items(
            adaptable, task, test_items, None, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens
        )
        console.print(f"base weights: {sum(base_correct)}/{len(base_correct)} test items right", highlight=False)
        arms = []
        for seed in args.seed_list:
            shots = select_shots(task, args.shots, seed)
            for init in INITS:
                arm = run_arm(registry, adaptable, task, shots, test_items, experts, args, seed, init)
                console.print(
                    f"seed {seed}, {init} start ({_start_text(arm.start)}): shots {_pct(arm.start_fitness[0])} at the "
                    f"start, {_pct(arm.fitness[0])} at the end; test {sum(arm.test_correct)}/{len(test_items)}, "
                    f"{arm.seconds:.0f} s",
                    highlight=False,
                )
                arms.append(arm)
    return {
        "format": JSON_FORMAT,
        "machine": machine_line(args.device),
        "task": task.name,
        "experts": expert_names,
        "router": router.config.name,
        "settings": {
            key: getattr(args, key)
            for key in ("seeds", "shots", "population", "generations", "method", "per_matrix", "limit")
        }
        | {"max_new_tokens": args.max_new_tokens or task.max_new_tokens, "batch_size": args.batch_size},
        "test_items": [item.id for item in test_items],
        "base_correct": base_correct,
        "arms": [asdict(arm) | {"test_accuracy": arm.test_accuracy} for arm in arms],
        "paired": [asdict(row) | {"delta": row.result.delta} for row in comparisons(arms, base_correct)],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=220)
    try:
        data = measure(args, console)
    except T2Error as exc:
        print(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    arms = [Arm(**{k: v for k, v in arm.items() if k != "test_accuracy"}) for arm in data["arms"]]
    base = data["base_correct"]
    console.print(f"{data['machine']}; task {data['task']}")
    console.print(runs_table(arms, len(base)))
    console.print(paired_table(comparisons(arms, base), sum(base) / len(base)))
    if args.json:
        write_json(args.json, data)
        console.print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
