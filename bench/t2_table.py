"""The Transformer-Squared table: base weights, each category expert and every pass-1 strategy on held-out tasks.

    T2_HOME=... python bench/t2_table.py [--per-task 100] [--tasks addition-3digit,python-types-expr,possession-long]
        [--max-new-tokens 64] [--batch-size 16] [--pass1 score] [--router NAME] [--cem-task T]
        [--model M] [--device cpu] [--threads N] [--dispatch-limit N] [--markdown] [--json PATH]

Needs a registry with category experts (the latest expert of each category: math, reasoning,
code, found as `t2 ask` finds them) and a learned router (`t2 router train`) for the model.

Items: the first `--per-task` test items of each of `--tasks`, tasks no expert was trained on.
By default the held-out variants of the starter bank's tasks (docs/tasks.md): `addition-3digit`
(math; its expert learned two-digit `addition`), `python-types-expr` (code; its expert learned the
types of literals, `python-types`) and `possession-long` (reasoning; its expert learned stories of
one to three hand-overs, `possession`). `--tasks arc-challenge,arithmetic,string-ops` asks benchmark
sets of the same three categories instead. Each item keeps its task's category as its family. Every row answers the same items greedily, the way `t2 eval --task T
--strategy S` does (`evaluate_strategy`, nothing recorded):

- `base`: the base weights (`--strategy none`);
- `expert:NAME`: one category expert on every item;
- `prompt`: pass 1 asks the base model the paper's classification question (`--pass1`,
  `score` by default as in bench/dispatch_accuracy.py);
- `classifier`: the same question with the dispatch expert applied (only if one is registered);
- `cem`: each task answered with its own CEM mixture (`t2 adapt --task T`: alphas searched on a
  few shots of that task, as the paper adapts per task); with `--cem-task T`, T's mixture
  answers every item instead. Not measured when a mixture is missing;
- `router` / `router-soft`: the learned router's likeliest class / its probabilities as a mixture.

Per row: accuracy overall and per family with 95% Wilson intervals; paired against the base
weights and against the best single expert (the expert row with the highest overall accuracy)
on the same items: gains / losses and the two-sided exact McNemar p; for routed rows where
the items went and pass 1's seconds per item. Then the pass-1 category accuracy of `prompt`,
`classifier` and `router` on the `dispatch` test split and the hand-written prompts
(bench/dispatch_accuracy.py's sets and rule).

Every figure is computed here from per-item results; `--json` keeps them all.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from registry.queries import experts as expert_rows
from t2cli.adapt.cem import latest_cem_mixture
from t2cli.ask.engine import Asker, AskSettings, prepare_model, targets_for
from t2cli.ask.evaluation import StrategyEvalResult, evaluate_strategy
from t2cli.cli.console import progress_bar
from t2cli.errors import T2Error
from t2cli.eval.accuracy import wilson_interval
from t2cli.eval.paired import Paired, paired
from t2cli.home import open_registry
from t2cli.router.store import find_router, load_router, stale_reason
from t2cli.svf.adaptable import load_adaptable
from t2cli.tasks import get_task
from t2cli.tasks.dispatch_task import DISPATCH_TASK, CategoryExpert, category_experts

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable
    from t2cli.tasks import Task

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # run as a script, Python puts bench/ on the path, not the checkout
from bench.dispatch_accuracy import (  # noqa: E402
    HANDWRITTEN,
    DispatchScore,
    Question,
    dispatch_test_questions,
    handwritten_questions,
    score_dispatch,
)
from bench.reporting import machine_line, write_json  # noqa: E402

DEFAULT_TASKS = "addition-3digit,python-types-expr,possession-long"
BASE = "base"
MIXTURE = "a mixture"  # router-soft's per-prompt mixtures, counted together in the routing column
JSON_FORMAT = 1


class SetupError(Exception):
    """The registry cannot give this table (no category experts, no usable router): one line, exit code 2."""


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Accuracy:
    correct: int
    n: int
    value: float
    low: float  # 95% Wilson interval
    high: float


def proportion(correct: int, n: int) -> Accuracy:
    return Accuracy(correct, n, correct / n if n else 0.0, *wilson_interval(correct, n))


def accuracy(flags: Sequence[bool]) -> Accuracy:
    return proportion(sum(1 for flag in flags if flag), len(flags))


# --------------------------------------------------------------------------- rows: plans and per-item results


@dataclass(frozen=True)
class Item:
    task: str
    family: str  # the task's category: the kind of question, whatever answers it
    id: str


@dataclass(frozen=True)
class RowPlan:
    """One row of the table: the strategy each task is answered with, or why the row is not measured."""

    name: str
    what: str  # what the row means, in words
    kind: str  # base | expert | routed | cem
    strategies: dict[str, str] = field(default_factory=dict)  # task -> `t2 eval --strategy` value
    pass1: str = "generate"
    unavailable: str | None = None


@dataclass
class RowRun:
    """A row's per-item results, in the order of the items."""

    plan: RowPlan
    correct: list[bool] = field(default_factory=list)
    choices: list[str] = field(default_factory=list)  # what pass 2 used for each item
    pass1_seconds: float = 0.0  # all items
    seconds: float = 0.0  # pass 1 and pass 2, all items


def plan_rows(
    registry: Registry,
    base_model_id: int,
    experts: Sequence[CategoryExpert],
    tasks: Sequence[str],
    *,
    pass1: str,
    cem_task: str | None,
) -> list[RowPlan]:
    """The table's rows, in order; a row whose artefact is missing says so instead of being measured."""
    every = lambda strategy: dict.fromkeys(tasks, strategy)
    rows = [RowPlan(BASE, "base weights", "base", every("none"))]
    rows += [
        RowPlan(
            f"expert:{e.expert}", f"{e.category} expert (trained on {e.task})", "expert", every(f"expert:{e.expert}")
        )
        for e in experts
    ]
    rows.append(
        RowPlan(
            "prompt", f"pass 1: the base model names the category (--pass1 {pass1})", "routed", every("prompt"), pass1
        )
    )
    if expert_rows.latest_for_task(registry, base_model_id, DISPATCH_TASK) is None:
        rows.append(
            RowPlan("classifier", "", "routed", unavailable="not available (no dispatch classifier registered)")
        )
    else:
        what = f"pass 1: the dispatch expert names the category (--pass1 {pass1})"
        rows.append(RowPlan("classifier", what, "routed", every("classifier"), pass1))
    rows.append(cem_row(registry, base_model_id, tasks, cem_task))
    rows.append(RowPlan("router", "the learned router's likeliest class (hard)", "routed", every("router")))
    rows.append(RowPlan("router-soft", "the router's class probabilities as a mixture", "routed", every("router-soft")))
    return rows


def cem_row(registry: Registry, base_model_id: int, tasks: Sequence[str], cem_task: str | None) -> RowPlan:
    """Each task's own CEM mixture (the paper's protocol), or with ``cem_task`` that task's mixture on every item."""
    if cem_task is not None:
        mixture = latest_cem_mixture(registry, cem_task, base_model_id)
        if mixture is None:
            reason = f"not available (no CEM mixture for task {cem_task}: run `t2 adapt --task {cem_task}`)"
            return RowPlan("cem", "", "cem", unavailable=reason)
        what = f"CEM mixture {mixture} (adapted to {cem_task}) on every item"
        return RowPlan("cem", what, "cem", dict.fromkeys(tasks, f"expert:{mixture}"))
    missing = [task for task in tasks if latest_cem_mixture(registry, task, base_model_id) is None]
    if missing:
        reason = (
            f"not available (no CEM mixture for {', '.join(missing)}: run `t2 adapt --task T` for each, "
            "or give --cem-task T to use one task's mixture on every item)"
        )
        return RowPlan("cem", "", "cem", unavailable=reason)
    return RowPlan("cem", "each task's own CEM mixture (`t2 adapt --task T`)", "cem", dict.fromkeys(tasks, "cem"))


# --------------------------------------------------------------------------- the table, from per-item results


@dataclass(frozen=True)
class RowSummary:
    name: str
    what: str
    unavailable: str | None
    overall: Accuracy | None
    families: dict[str, Accuracy]
    vs_base: Paired | None
    vs_best: Paired | None  # None for the best expert itself
    routing: dict[str, int] | None  # routed rows: items per choice
    pass1_s_per_item: float | None


@dataclass(frozen=True)
class TableSummary:
    items: int
    families: dict[str, int]  # family -> items, in the order of the tasks
    best_expert: str | None
    rows: list[RowSummary]


def best_single_expert(runs: Sequence[RowRun]) -> RowRun | None:
    """The expert row with the most items right (the first listed on a tie), None without one."""
    experts = [run for run in runs if run.plan.kind == "expert" and run.plan.unavailable is None]
    return max(experts, key=lambda run: sum(run.correct), default=None)


def routing_counts(choices: Sequence[str]) -> dict[str, int]:
    """Items per expert / base, most first; router-soft's mixtures of several experts count as one entry."""
    counts = Counter(MIXTURE if choice.startswith("mix[") else choice for choice in choices)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summarise(items: Sequence[Item], runs: Sequence[RowRun]) -> TableSummary:
    """Every figure of the table, from the rows' per-item results on ``items``."""
    families = dict(Counter(item.family for item in items))
    base = next(run for run in runs if run.plan.kind == "base")
    best = best_single_expert(runs)
    rows = []
    for run in runs:
        plan = run.plan
        if plan.unavailable is not None:
            rows.append(RowSummary(plan.name, plan.what, plan.unavailable, None, {}, None, None, None, None))
            continue
        if len(run.correct) != len(items):
            raise ValueError(f"row {plan.name} has {len(run.correct)} results for {len(items)} items")
        per_family = {
            family: accuracy([ok for ok, item in zip(run.correct, items) if item.family == family])
            for family in families
        }
        routed = plan.kind == "routed"
        rows.append(
            RowSummary(
                plan.name,
                plan.what,
                None,
                accuracy(run.correct),
                per_family,
                None if run is base else paired(run.correct, base.correct),
                None if best is None or run is best else paired(run.correct, best.correct),
                routing_counts(run.choices) if routed else None,
                run.pass1_seconds / len(items) if routed else None,
            )
        )
    return TableSummary(len(items), families, best.plan.name if best else None, rows)


# --------------------------------------------------------------------------- measuring


@dataclass(frozen=True)
class RunSettings:
    per_task: int
    max_new_tokens: int | None  # a cap on each task's own budget
    batch_size: int
    router: str | None
    device: str


def seen_in_training(experts: Sequence[CategoryExpert], tasks: Sequence[str]) -> list[tuple[str, str]]:
    """(task, expert) for each task of the table that a category expert was trained on."""
    return [(task, e.expert) for task in tasks for e in experts if task == e.task]


def held_out_items(tasks: Sequence[Task], per_task: int) -> list[Item]:
    """The first ``per_task`` test items of each task, with the task's category as family."""
    return [
        Item(task.name, task.category or task.name, item.id) for task in tasks for item in task.split("test")[:per_task]
    ]


def run_row(
    registry: Registry,
    adaptable: Adaptable,
    plan: RowPlan,
    tasks: Sequence[Task],
    settings: RunSettings,
    on_task: Callable[[StrategyEvalResult], None] | None = None,
) -> RowRun:
    """Answer every task's items with the row's strategy on the loaded model; nothing is recorded."""
    run = RowRun(plan)
    if plan.unavailable is not None:
        return run
    for task in tasks:
        budget = min(settings.max_new_tokens, task.max_new_tokens) if settings.max_new_tokens else None
        result = evaluate_strategy(
            registry,
            task,
            plan.strategies[task.name],
            adaptable=adaptable,
            limit=settings.per_task,
            batch_size=settings.batch_size,
            max_new_tokens=budget,
            pass1=plan.pass1,
            router=settings.router,
            device=settings.device,
            record=False,
        )
        run.correct += [bool(sample["correct"]) for sample in result.samples]
        run.choices += [str(sample["choice"]) for sample in result.samples]
        run.pass1_seconds += result.dispatch_seconds
        run.seconds += result.seconds
        if on_task:
            on_task(result)
    return run


@dataclass(frozen=True)
class DispatchRow:
    strategy: str
    set_name: str
    score: DispatchScore | None
    unavailable: str | None = None

    @property
    def right(self) -> Accuracy | None:
        return None if self.score is None else proportion(self.score.right, self.score.n)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "right_category": None if self.right is None else asdict(self.right)}


def dispatch_plans(rows: Sequence[RowPlan], router: str | None) -> list[tuple[str, AskSettings | None, str | None]]:
    """(label, settings, why not) of each pass-1 strategy whose category accuracy is measured."""
    plans: list[tuple[str, AskSettings | None, str | None]] = []
    for row in rows:
        if row.name in ("prompt", "classifier", "router"):
            settings = None if row.unavailable else AskSettings(strategy=row.name, pass1=row.pass1, router=router)
            plans.append((row.name, settings, row.unavailable))
    return plans


def question_sets(
    registry: Registry, base_model_id: int, experts: Sequence[CategoryExpert], limit: int | None
) -> dict[str, list[Question] | str]:
    """The dispatch test split (needs two categories) and the hand-written prompts: name -> questions or why not."""
    sets: dict[str, list[Question] | str] = {}
    try:
        sets["dispatch test"] = dispatch_test_questions(registry, base_model_id, limit)
    except T2Error as exc:
        sets["dispatch test"] = f"not available ({exc.message})"
    sets["hand-written"] = handwritten_questions(HANDWRITTEN, {e.category for e in experts})
    return sets


# --------------------------------------------------------------------------- rendering


def pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def interval(acc: Accuracy) -> str:
    return f"[{100 * acc.low:.1f}, {100 * acc.high:.1f}]"


def p_text(p: float) -> str:
    """The exact p, three decimals, or two significant digits below 0.001 (how far below matters at n = 300)."""
    return f"{p:.1e}" if p < 0.001 else f"{p:.3f}"


def pair_text(pair: Paired | None) -> tuple[str, str]:
    return ("", "") if pair is None else (f"{pair.gains} / {pair.losses}", p_text(pair.p))


def routing_text(routing: dict[str, int] | None) -> str:
    return "" if routing is None else ", ".join(f"{choice} {count}" for choice, count in routing.items())


def main_columns(summary: TableSummary) -> list[str]:
    best = summary.best_expert or "best expert"
    return [
        "row",
        "what",
        f"accuracy (n={summary.items})",
        "95% CI",
        *(f"{family} (n={n})" for family, n in summary.families.items()),
        "vs base: gains / losses",
        "p (vs base)",
        f"vs {best}: gains / losses",
        f"p (vs {best})",
        "routed to",
        "pass 1 s/item",
    ]


def main_cells(summary: TableSummary) -> list[list[str]]:
    """The main table's cells, one list per row (the same for the terminal and for markdown)."""
    cells = []
    width = len(main_columns(summary))
    for row in summary.rows:
        if row.overall is None:
            cells.append([row.name, row.unavailable or "", *[""] * (width - 2)])
            continue
        families = [f"{pct(acc.value)} {interval(acc)}" for acc in row.families.values()]
        cells.append(
            [
                row.name,
                row.what,
                pct(row.overall.value),
                interval(row.overall),
                *families,
                *pair_text(row.vs_base),
                *pair_text(row.vs_best),
                routing_text(row.routing),
                "" if row.pass1_s_per_item is None else f"{row.pass1_s_per_item:.3f}",
            ]
        )
    return cells


DISPATCH_COLUMNS = ["pass 1", "set", "n", "right category", "95% CI", "sent to base", "median pass 1 s"]


def dispatch_cells(rows: Sequence[DispatchRow]) -> list[list[str]]:
    cells = []
    for row in rows:
        if row.score is None:
            cells.append([row.strategy, row.set_name, "", row.unavailable or "", "", "", ""])
            continue
        score = row.score
        acc = proportion(score.right, score.n)
        cells.append(
            [
                row.strategy,
                row.set_name,
                str(score.n),
                pct(acc.value),
                interval(acc),
                pct(score.fallback / score.n if score.n else 0.0),
                f"{score.median_seconds:.3f}",
            ]
        )
    return cells


def markdown_table(columns: Sequence[str], cells: Sequence[Sequence[str]]) -> str:
    numeric = lambda column: column not in ("row", "what", "pass 1", "set", "routed to")
    lines = [
        "| " + " | ".join(c.strip() for c in columns) + " |",
        "|" + "|".join("---:" if numeric(c) else "---" for c in columns) + "|",
    ]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in cells]
    return "\n".join(lines)


def rich_table(title: str, columns: Sequence[str], cells: Sequence[Sequence[str]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="left" if column in ("row", "what", "pass 1", "set", "routed to") else "right")
    for row in cells:
        table.add_row(*row)
    return table


# --------------------------------------------------------------------------- the run


def check_registry(registry: Registry, model: str | None, router: str | None) -> tuple[str, int, list[CategoryExpert]]:
    """The model's name, its base-model id and its category experts, once its experts and router are checked.

    Runs before the model is loaded, so that a registry that cannot give the table says so at once (SetupError).
    """
    prepared = prepare_model(registry, model, None)
    name, base_model_id = prepared.model_name, prepared.base_model_id
    experts = category_experts(registry, base_model_id)
    if base_model_id is None or not experts:
        raise SetupError(
            f"no category experts are registered for {name} in {registry.home}: train one per category first, "
            "e.g. `t2 train --task addition`, `t2 train --task arc-easy`, `t2 train --task coding`"
        )
    try:
        record = find_router(registry, router, base_model_id, name)
    except T2Error as exc:
        raise SetupError(f"{exc.message} in {registry.home}: run `t2 router train`") from None
    if record.base_model_id != base_model_id:
        raise SetupError(
            f"router {record.name!r} belongs to base model {record.base_model_name}, not {name}: "
            "run `t2 router train` for this model, or give --model"
        )
    stale = stale_reason(registry, load_router(registry, record), base_model_id)
    if stale is not None:
        raise SetupError(
            f"router {record.name!r} is stale ({stale} since it was trained): "
            f"run `t2 router train --name {record.name} --replace`"
        )
    return name, base_model_id, experts


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="the base model (default: the embedded SmolLM2-135M)")
    parser.add_argument(
        "--tasks", default=DEFAULT_TASKS, help=f"held-out tasks, comma-separated (default {DEFAULT_TASKS})"
    )
    parser.add_argument("--per-task", type=int, default=100, help="first N test items of each task (default 100)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on each task's own answer budget")
    parser.add_argument("--batch-size", type=int, default=16, help="pass-2 generation batch (default 16)")
    parser.add_argument(
        "--pass1", choices=("generate", "score"), default="score", help="pass 1 of prompt/classifier (default score)"
    )
    parser.add_argument("--router", default=None, help="the router (default: the latest of the model)")
    parser.add_argument("--cem-task", default=None, help="use this task's CEM mixture on every item")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--dispatch-limit", type=int, default=None, help="first N prompts of the dispatch test split")
    parser.add_argument(
        "--markdown", action="store_true", help="print markdown tables on stdout (terminal tables on stderr)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write every figure and per-item result here")
    args = parser.parse_args(argv)
    for option in ("per_task", "batch_size", "max_new_tokens", "threads", "dispatch_limit"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1 (got {value})")
    return args


@dataclass
class Measurement:
    """Everything one run measured: the rows' per-item results, the dispatch sets, and where it ran."""

    machine: str
    model: str
    settings: dict[str, Any]
    items: list[Item]
    runs: list[RowRun]
    dispatch: list[DispatchRow]

    def to_json(self, summary: TableSummary) -> dict[str, Any]:
        return {
            "format": JSON_FORMAT,
            "machine": self.machine,
            "model": self.model,
            "settings": self.settings,
            "items": [asdict(item) for item in self.items],
            "table": asdict(summary),
            "per_item": {
                run.plan.name: {"correct": run.correct, "choices": run.choices, "seconds": run.seconds}
                for run in self.runs
            },
            "dispatch": [row.to_json() for row in self.dispatch],
        }


def measure(args: argparse.Namespace, machine: str, console: Console) -> Measurement:
    """Every row on the held-out items and every pass-1 strategy on the dispatch sets, on one loaded model."""
    tasks = [get_task(name.strip()) for name in args.tasks.split(",") if name.strip()]
    settings = RunSettings(args.per_task, args.max_new_tokens, args.batch_size, args.router, args.device)
    with open_registry() as registry:
        model_name, base_id, experts = check_registry(registry, args.model, args.router)
        plans = plan_rows(registry, base_id, experts, [t.name for t in tasks], pass1=args.pass1, cem_task=args.cem_task)
        items = held_out_items(tasks, args.per_task)
        sets = question_sets(registry, base_id, experts, args.dispatch_limit)
        console.print(f"{machine}; model {model_name}; {len(items)} items of {', '.join(t.name for t in tasks)}")
        for task, expert in seen_in_training(experts, [t.name for t in tasks]):
            console.print(f"note: expert {expert} was trained on {task}: those items are not held out", highlight=False)
        adaptable = load_adaptable(registry, args.model, targets=targets_for(registry, base_id), device=args.device)
        with progress_bar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
        ) as progress:
            runs = answer_rows(registry, adaptable, plans, tasks, settings, progress, len(items))
            dispatch = dispatch_rows(registry, adaptable, dispatch_plans(plans, args.router), sets, progress)
    return Measurement(
        machine,
        model_name,
        {**asdict(settings), "tasks": [t.name for t in tasks], "pass1": args.pass1, "cem_task": args.cem_task},
        items,
        runs,
        dispatch,
    )


def answer_rows(
    registry: Registry,
    adaptable: Adaptable,
    plans: Sequence[RowPlan],
    tasks: Sequence[Task],
    settings: RunSettings,
    progress: Progress,
    items: int,
) -> list[RowRun]:
    """Every row on every task; one line per row and task as well, for logs where no bar is drawn."""
    bar = progress.add_task("answers", total=items * sum(1 for plan in plans if plan.unavailable is None))
    runs = []
    for plan in plans:
        progress.update(bar, description=f"answers: {plan.name}")

        def done(result: StrategyEvalResult, name: str = plan.name) -> None:
            progress.advance(bar, result.n)
            progress.console.print(
                f"{name} on {result.task}: {result.correct}/{result.n} right, {result.seconds:.1f} s "
                f"(pass 1 {result.dispatch_seconds:.1f} s)",
                highlight=False,
            )

        runs.append(run_row(registry, adaptable, plan, tasks, settings, done))
    return runs


def dispatch_rows(
    registry: Registry,
    adaptable: Adaptable,
    probes: Sequence[tuple[str, AskSettings | None, str | None]],
    sets: dict[str, list[Question] | str],
    progress: Progress,
) -> list[DispatchRow]:
    """Each measurable strategy on each available set; the others as rows saying why not."""
    sizes = [len(questions) for questions in sets.values() if not isinstance(questions, str)]
    bar = progress.add_task("pass 1 categories", total=sum(sizes) * sum(1 for _, s, _ in probes if s is not None))
    rows = []
    for label, ask_settings, unavailable in probes:
        asker = None if ask_settings is None else Asker(registry, ask_settings, adaptable=adaptable)
        for set_name, questions in sets.items():
            if asker is None:
                rows.append(DispatchRow(label, set_name, None, unavailable))
            elif isinstance(questions, str):  # the set itself cannot be built
                rows.append(DispatchRow(label, set_name, None, questions))
            else:
                progress.update(bar, description=f"pass 1 categories: {label}, {set_name}")
                score = score_dispatch(asker, questions, lambda: progress.advance(bar))
                rows.append(DispatchRow(label, set_name, score))
                progress.console.print(
                    f"pass 1 {label} on {set_name}: {score.right}/{score.n} right category", highlight=False
                )
    return rows


def print_markdown(title: str, summary: TableSummary, dispatch: Sequence[DispatchRow]) -> None:
    print(title)
    print()
    print(markdown_table(main_columns(summary), main_cells(summary)))
    print()
    print(markdown_table(DISPATCH_COLUMNS, dispatch_cells(dispatch)))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    terminal = Console(width=250, stderr=args.markdown)  # with --markdown, stdout holds only the markdown
    machine = machine_line(args.device)
    try:
        measured = measure(args, machine, terminal)
    except SetupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except T2Error as exc:
        print(f"error: {exc.message}" + (f" ({exc.hint})" if exc.hint else ""), file=sys.stderr)
        return exc.exit_code
    summary = summarise(measured.items, measured.runs)
    title = f"Transformer-Squared table: {measured.model}, {summary.items} held-out items; {machine}"
    terminal.print(rich_table(title, main_columns(summary), main_cells(summary)))
    terminal.print(rich_table("pass-1 category accuracy", DISPATCH_COLUMNS, dispatch_cells(measured.dispatch)))
    if args.markdown:
        print_markdown(title, summary, measured.dispatch)
    if args.json:
        write_json(args.json, measured.to_json(summary))
        terminal.print(f"JSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
