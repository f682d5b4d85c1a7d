"""The paper's vision-language setting on a real GPU: SVF on LLaVA-NeXT-8B, trained on TextVQA, tested on OK-VQA.

    python bench/vlm_gpu.py --json $OUT/vlm.json                # LLaVA-NeXT-8B, the reference settings
    python bench/vlm_gpu.py --steps 20 --batch 64 --eval-limit 500    # scaled down (see bench/README.md)
    python bench/vlm_gpu.py --tiny                              # the same code path on CPU, under a minute (12 s measured)

Transformer-Squared trains an SVF expert on the language model of LLaVA-NeXT (Llama 3 8B) with
TextVQA and reports a gain on OK-VQA. This script runs that with t2's own engine, in order:

1. decompose: ``load_adaptable`` (resolves the model from the HF cache, decomposes its targets once);
2. train: ``t2cli.train.loop.train`` at the reference settings of docs/method.md (REINFORCE with the
   +1/-1 reward, greedy rollouts, 256 rollouts per step, lr 2e-3 held constant, clip norm 1e-3, 200
   steps, validation every 10, the best-on-validation z registered); ``--steps``, ``--batch``... scale it;
3. evaluate the base weights and the expert, greedy, on the same held-out items of each evaluation
   task (OK-VQA test; TextVQA's held-out validation items): accuracy with 95% Wilson intervals
   (``t2cli.eval.accuracy``), gains, losses and the exact McNemar p (``t2cli.eval.paired``).

Before anything loads it refuses, in one line each, a machine without a CUDA GPU, a model not in
the HF cache, and data not in the HF cache, saying what to put where. ``--tiny`` runs the same
steps on a tiny random LLaVA built locally (tests/vlm_models.py) and the Pillow-drawn ``shapes``
task, on CPU, in a temporary T2_HOME: a smoke test of the path, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run from a checkout: t2cli, tests.vlm_models (--tiny)
sys.path.insert(1, str(REPO / "bench"))

T0 = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


class Refused(Exception):
    """A precondition this machine does not meet: one line saying what to put where."""


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Plan:
    """What one run does; the defaults are the reference settings (docs/method.md §2)."""

    model: str = "llava-next-8b"
    train_task: str = "textvqa"
    eval_tasks: tuple[str, ...] = ("okvqa", "textvqa")
    targets: str = "all"  # the language model's attention + MLP (the paper's best SVF setting)
    steps: int = 200
    batch: int = 256  # rollouts per step: greedy, one per prompt
    lr: float = 2e-3
    clip_norm: float = 1e-3
    eval_every: int = 10
    valid_size: int = 500
    eval_limit: int | None = None  # test items per evaluation task (None: the whole test split)
    micro_batch: int = 2  # the memory plan: ~16 GiB of loss activations per LLaVA-NeXT sequence
    gen_batch: int = 32
    max_new_tokens: int | None = None  # None: the task's own (16 for the VQA sets)
    device: str = "auto"
    seed: int = 0


TINY = Plan(
    model="",  # built at run time
    train_task="shapes",
    eval_tasks=("shapes",),
    steps=2,
    batch=8,
    lr=2e-2,
    clip_norm=1.0,
    eval_every=2,
    valid_size=8,
    eval_limit=24,
    micro_batch=8,
    gen_batch=32,
    max_new_tokens=4,
    device="cpu",
)


# --------------------------------------------------------------------------- preconditions


def check_gpu(device: str) -> None:
    import torch

    if device == "cpu" or not torch.cuda.is_available():
        raise Refused(
            "no CUDA GPU here: LLaVA-NeXT-8B training needs one of 80 GB or more "
            "(`python bench/memory_plan.py --vlm llava-next-8b`); run this on a GPU machine, "
            "or `python bench/vlm_gpu.py --tiny` for the CPU smoke run"
        )


def check_model(model: str) -> str:
    """The model's folder in the HF cache (or on disk); Refused when it is not on this machine."""
    from t2cli.errors import T2Error
    from t2cli.models.resolve import ALIASES, resolve_model
    from t2cli.tasks.hf_datasets import cache_dir

    try:
        return str(resolve_model(model).path)
    except T2Error as exc:
        alias = ALIASES.get(model.lower())
        repo = alias.hub_id if alias else model
        raise Refused(
            f"the model {model} ({repo}) is not on this machine ({exc.message}): put it in the HF cache at "
            f"{cache_dir()} (`hf download {repo}` where the Hub is reachable, then copy the cache; HF_HUB_CACHE or "
            "HF_HOME chooses the folder), or pass --model FOLDER"
        ) from None


def check_data(tasks: Sequence[str]) -> dict[str, Any]:
    """Each task with its splits read (the VQA sets from the HF cache); Refused naming what is missing."""
    from t2cli.errors import T2Error
    from t2cli.tasks import get_task

    loaded = {}
    for name in tasks:
        try:
            task = get_task(name)
            task.split("test")  # builds every split: reads the cached Parquet files
        except T2Error as exc:
            raise Refused(f"{exc.message}: {exc.hint}" if exc.hint else exc.message) from None
        loaded[name] = task
    return loaded


# --------------------------------------------------------------------------- the run


@dataclass
class Comparison:
    """Base against expert on one evaluation task's held-out items."""

    task: str
    split: str
    n: int
    base_correct: int
    expert_correct: int
    base_ci: tuple[float, float]
    expert_ci: tuple[float, float]
    gains: int
    losses: int
    p: float
    seconds: float

    def row(self) -> str:
        def pct(k: int, ci: tuple[float, float]) -> str:
            return f"{100 * k / self.n:.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"

        delta = 100 * (self.expert_correct - self.base_correct) / self.n
        return (
            f"| {self.task} ({self.split}) | {self.n} | {pct(self.base_correct, self.base_ci)} | "
            f"{pct(self.expert_correct, self.expert_ci)} | {delta:+.1f} | {self.gains} / {self.losses} | {self.p:.3g} |"
        )


@dataclass
class Report:
    plan: dict[str, Any]
    machine: str
    model: str
    decompose_s: float = 0.0
    train_s: float = 0.0
    expert: str | None = None
    best_step: int | None = None
    base_valid: float | None = None
    best_valid: float | None = None
    comparisons: list[Comparison] = field(default_factory=list)
    total_s: float = 0.0


TABLE_HEAD = (
    "| task (split) | n | base, 95% Wilson | SVF expert, 95% Wilson | delta, points | gains / losses | McNemar p |\n"
    "|---|---|---|---|---|---|---|"
)


def compare(adaptable, task, z, *, limit: int | None, max_new_tokens: int | None, batch: int) -> Comparison:
    """Greedy answers of the base weights and of z on the same test items; Wilson intervals and McNemar."""
    from t2cli.eval.accuracy import run_items, wilson_interval
    from t2cli.eval.paired import paired

    items = task.split("test")[:limit] if limit else task.split("test")
    budget = max_new_tokens or task.max_new_tokens
    started = time.perf_counter()
    base, _, _, _ = run_items(adaptable, task, items, None, batch_size=batch, max_new_tokens=budget)
    expert, _, _, _ = run_items(adaptable, task, items, z, batch_size=batch, max_new_tokens=budget)
    test = paired(expert, base)
    n = len(items)
    return Comparison(
        task=task.name,
        split="test",
        n=n,
        base_correct=sum(base),
        expert_correct=sum(expert),
        base_ci=wilson_interval(sum(base), n),
        expert_ci=wilson_interval(sum(expert), n),
        gains=test.gains,
        losses=test.losses,
        p=test.p,
        seconds=time.perf_counter() - started,
    )


def run(plan: Plan, tasks: dict[str, Any], *, name: str, json_path: Path | None) -> Report:
    """Decompose, train, compare; prints progress and the table, returns (and writes) the report."""
    import torch
    from reporting import machine_line, write_json

    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable
    from t2cli.svf.expert import load_expert
    from t2cli.tasks.modality import check_model_fits_task
    from t2cli.train.loop import TrainConfig, train

    train_task = tasks[plan.train_task]
    check_model_fits_task(train_task, plan.model, plan.targets)
    report = Report(plan=plan.__dict__ | {"eval_tasks": list(plan.eval_tasks)}, machine="", model=plan.model)
    torch.manual_seed(plan.seed)
    with open_registry() as registry:
        # 1. decompose (once per model and targets; a later run reuses the stored factors)
        log(f"loading {plan.model} and decomposing its '{plan.targets}' targets (first run only)")
        started = time.perf_counter()
        adaptable = load_adaptable(registry, plan.model, targets=plan.targets, device=plan.device)
        report.decompose_s = time.perf_counter() - started
        report.machine = machine_line(adaptable.device)
        log(f"{report.machine}")
        log(f"loaded and decomposed in {report.decompose_s:.1f} s: {len(adaptable.svf.factors)} matrices")

        # 2. train at the reference settings: greedy rollouts, one per prompt, the raw +1/-1 reward
        config = TrainConfig(
            task=plan.train_task,
            name=name,
            model=plan.model,
            targets=plan.targets,
            steps=plan.steps,
            prompts_per_step=plan.batch,
            samples_per_prompt=1,
            temperature=0.0,
            advantage="raw",
            lr=plan.lr,
            min_lr_ratio=1.0,  # constant, as the reference code
            clip_norm=plan.clip_norm,
            eval_every=plan.eval_every,
            valid_size=plan.valid_size,
            micro_batch=plan.micro_batch,
            gen_batch=plan.gen_batch,
            max_new_tokens=plan.max_new_tokens,
            seed=plan.seed,
            device=adaptable.device,
        )
        log(
            f"training on {plan.train_task}: {plan.steps} steps x {plan.batch} greedy rollouts, lr {plan.lr} "
            f"constant, clip {plan.clip_norm}, validation on {plan.valid_size} items every {plan.eval_every} steps"
        )

        def progress(message: str, metrics) -> None:
            if metrics is None:
                log(f"  {message}")
            else:
                valid = "" if metrics.valid_accuracy is None else f", valid {metrics.valid_accuracy:.3f}"
                log(f"  step {metrics.step}: train accuracy {metrics.accuracy:.3f}, loss {metrics.loss:.4f}{valid}")

        started = time.perf_counter()
        result = train(registry, adaptable, train_task, config, on_event=progress)
        report.train_s = time.perf_counter() - started
        report.expert, report.best_step = result.expert, result.best_step
        report.base_valid, report.best_valid = result.base_valid_accuracy, result.best_valid_accuracy
        log(
            f"expert {result.expert}: best step {result.best_step}, valid {result.base_valid_accuracy:.3f} -> "
            f"{result.best_valid_accuracy:.3f}, trained in {report.train_s:.1f} s"
        )
        z = load_expert(registry, result.expert).z

        # 3. base against expert on the held-out items of each evaluation task
        for task_name in plan.eval_tasks:
            log(
                f"evaluating base and expert on {task_name} test"
                + (f" (first {plan.eval_limit})" if plan.eval_limit else "")
            )
            comparison = compare(
                adaptable,
                tasks[task_name],
                z,
                limit=plan.eval_limit,
                max_new_tokens=plan.max_new_tokens,
                batch=plan.gen_batch,
            )
            report.comparisons.append(comparison)
            log(f"  {comparison.row()}")
    report.total_s = time.perf_counter() - T0
    print()
    print(
        f"{plan.model}, targets {plan.targets}: SVF expert trained on {plan.train_task} "
        f"({plan.steps} steps x {plan.batch}); {report.machine}; {report.total_s:.0f} s in all"
    )
    print(TABLE_HEAD)
    for comparison in report.comparisons:
        print(comparison.row())
    if json_path is not None:
        write_json(json_path, json.loads(json.dumps(report, default=lambda o: o.__dict__)))
    return report


# --------------------------------------------------------------------------- entry point


def parse(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Plan]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Plan()
    parser.add_argument("--tiny", action="store_true", help="a tiny local LLaVA and the shapes task, on CPU (< 1 min)")
    parser.add_argument("--model", default=None, help=f"alias, folder or Hub id (default {default.model})")
    parser.add_argument("--targets", default=None, help="t2 --targets: all (default), mlp, attn, vision, a regex")
    parser.add_argument("--steps", type=int, default=None, help=f"optimizer steps (default {default.steps})")
    parser.add_argument("--batch", type=int, default=None, help=f"greedy rollouts per step (default {default.batch})")
    parser.add_argument("--lr", type=float, default=None, help=f"constant learning rate (default {default.lr})")
    parser.add_argument("--valid-size", type=int, default=None, help=f"validation items (default {default.valid_size})")
    parser.add_argument(
        "--eval-every", type=int, default=None, help=f"steps between validations ({default.eval_every})"
    )
    parser.add_argument("--eval-limit", type=int, default=None, help="test items per evaluation task (default all)")
    parser.add_argument("--micro-batch", type=int, default=None, help=f"loss micro-batch ({default.micro_batch})")
    parser.add_argument("--gen-batch", type=int, default=None, help=f"sequences per generate ({default.gen_batch})")
    parser.add_argument("--name", default=None, help="the expert's name (default textvqa-svf-<time>)")
    parser.add_argument("--home", type=Path, default=None, help="T2_HOME to use (--tiny: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    args = parser.parse_args(argv)
    base = TINY if args.tiny else default
    overrides = {
        key: value
        for key, value in {
            "model": args.model,
            "targets": args.targets,
            "steps": args.steps,
            "batch": args.batch,
            "lr": args.lr,
            "valid_size": args.valid_size,
            "eval_every": args.eval_every,
            "eval_limit": args.eval_limit,
            "micro_batch": args.micro_batch,
            "gen_batch": args.gen_batch,
        }.items()
        if value is not None
    }
    return args, Plan(**(base.__dict__ | overrides))


def main(argv: Sequence[str] | None = None) -> int:
    args, plan = parse(argv)
    home = args.home or (Path(tempfile.mkdtemp(prefix="t2-vlm-tiny-")) if args.tiny else None)
    if home is not None:
        os.environ["T2_HOME"] = str(home)
    name = args.name or f"{plan.train_task}-svf-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        if args.tiny:
            import torch

            from tests.vlm_models import build_tiny_vlm

            torch.set_num_threads(min(2, torch.get_num_threads()))
            folder = Path(tempfile.mkdtemp(prefix="tiny-llava-")) / "llava"
            plan = Plan(**(plan.__dict__ | {"model": plan.model or str(build_tiny_vlm("llava", folder, seed=0))}))
            log(f"--tiny: a random 2-layer LLaVA at {plan.model}, the shapes task, CPU, T2_HOME={home}")
        else:  # refused in this order, before anything loads: no GPU, no weights, no data
            check_gpu(plan.device)
            check_model(plan.model)
        tasks = check_data(list(dict.fromkeys([plan.train_task, *plan.eval_tasks])))
        run(plan, tasks, name=name, json_path=args.json)
    except Refused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # t2's own errors (T2Error): one line, as the CLI prints them
        from t2cli.errors import T2Error

        if not isinstance(exc, T2Error):
            raise
        print(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
