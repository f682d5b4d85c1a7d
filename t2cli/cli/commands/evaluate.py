"""``t2 eval``: accuracy of the base model or an expert on a task, with its 95% interval."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from t2cli.cli.console import err, out, print_json, progress_bar
from t2cli.cli.options import (
    BatchSizeOpt,
    DeviceOpt,
    ExpertOpt,
    JsonOpt,
    MaxNewTokensOpt,
    ModelOpt,
    RouterOpt,
    RouterTemperatureOpt,
    TaskOpt,
    TopKOpt,
)
from t2cli.errors import UsageError


def eval_cmd(
    task: TaskOpt,
    expert: ExpertOpt = None,
    base: Annotated[bool, typer.Option("--base", help="Evaluate the base weights.")] = False,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            "-s",
            help="Evaluate a two-pass strategy as `t2 ask` runs it: prompt, classifier, cem, router, "
            "router-soft, none or expert:NAME (pass 1 per item, pass 2 batched per decision).",
            show_default=False,
        ),
    ] = None,
    pass1: Annotated[
        str,
        typer.Option(
            "--pass1", help="With --strategy prompt/classifier: generate (and parse) or score the categories."
        ),
    ] = "generate",
    model: ModelOpt = None,
    split: Annotated[str, typer.Option(help="train, valid or test.")] = "test",
    limit: Annotated[int | None, typer.Option(min=1, help="Evaluate the first N items of the split.")] = None,
    batch_size: BatchSizeOpt = 32,
    max_new_tokens: MaxNewTokensOpt = None,
    router: RouterOpt = None,
    router_temperature: RouterTemperatureOpt = 1.0,
    top_k: TopKOpt = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Greedy accuracy on a task split, stored in the registry (shown by `t2 experts show`).

    Examples:

      t2 eval --task addition --base --limit 200

      t2 eval --task addition --expert add-v1 --limit 200 --json

      t2 eval --task dispatch --expert dispatch-svf     # dispatch accuracy of the classifier

      t2 eval --task arc-challenge --strategy prompt --limit 100

      t2 eval --task arc-challenge --strategy classifier --pass1 score --limit 100

      t2 eval --task arc-challenge --strategy router-soft --top-k 2 --limit 100
    """
    from t2cli.eval.accuracy import evaluate  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.svf.adaptable import load_adaptable  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.svf.expert import base_model_argument, check_base_model, load_expert  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.tasks import get_task, needs_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.tasks.modality import check_model_fits_task  # noqa: PLC0415 - CLI start-up: pulls transformers' config classes
    from t2cli.tasks.types import SPLITS  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)

    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}", f"use one of {', '.join(SPLITS)}")
    if sum((base, expert is not None, strategy is not None)) != 1:
        raise UsageError("give exactly one of --expert NAME, --base or --strategy S", "e.g. t2 eval --task math --base")
    if strategy is not None:
        routing = {"router": router, "router_temperature": router_temperature, "top_k": top_k}
        _eval_strategy(task, strategy, model, split, limit, batch_size, max_new_tokens, device, as_json, pass1, routing)
        return
    task_obj = None if needs_registry(task) else get_task(task)  # `dispatch` is built once the model is loaded
    if task_obj is not None and expert is None:  # the base weights: refused from the config, before the registry opens
        check_model_fits_task(task_obj, model, "all")
    with open_registry() as registry:
        loaded = load_expert(registry, expert) if expert else None
        targets = loaded.config.targets if loaded else "all"
        if loaded is not None:
            model = base_model_argument(loaded.config, model)
            if task_obj is not None:  # the expert's model and targets are known once it is read
                check_model_fits_task(task_obj, model, targets)
        err.print(f"loading {model or 'the embedded model'}...")
        adaptable = load_adaptable(registry, model, targets=targets, device=device)
        if loaded is not None:
            check_base_model(loaded.name, loaded.config.base_model, adaptable.identity)
        if task_obj is None:
            task_obj = get_task(task, registry=registry, base_model_id=adaptable.base_model_id)
        items = task_obj.split(split)
        total = min(limit, len(items)) if limit else len(items)
        with _item_progress(f"eval {task_obj.name}/{split}", quiet=as_json) as progress:
            bar = progress.add_task("eval", total=total)
            result = evaluate(
                registry,
                adaptable,
                task_obj,
                expert=expert,
                z=loaded.z if loaded else None,
                split=split,
                limit=limit,
                batch_size=batch_size,
                on_batch=lambda k: progress.advance(bar, k),
                max_new_tokens=max_new_tokens,
            )
    if as_json:
        print_json(asdict(result))
        return
    table = Table(title=f"{task_obj.name} ({split})")
    for column in ("weights", "n", "correct", "accuracy", "95% CI", "seconds", "tok/s"):
        table.add_column(column, justify="right" if column != "weights" else "left")
    table.add_row(
        expert or "base",
        str(result.n),
        str(result.correct),
        f"{result.accuracy:.1%}",
        f"[{result.ci_low:.1%}, {result.ci_high:.1%}]",
        f"{result.seconds:.0f}",
        f"{result.tokens_per_s:.0f}",
    )
    out.print(table)


def _item_progress(label: str, *, quiet: bool) -> Progress:
    """The bar of an evaluation: ``label``, items done of all, time taken and left."""
    return progress_bar(
        TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(), quiet=quiet
    )


def _eval_strategy(
    task: str,
    strategy: str,
    model,
    split,
    limit,
    batch_size,
    max_new_tokens,
    device,
    as_json,
    pass1: str,
    routing: dict[str, Any],
) -> None:
    from t2cli.ask.evaluation import evaluate_strategy  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.tasks import get_task  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.tasks.modality import check_model_fits_task  # noqa: PLC0415 - CLI start-up: pulls transformers' config classes

    task_obj = get_task(task)
    check_model_fits_task(task_obj, model, "all")  # an image task on a text-only model: one line, before loading
    total = min(limit, len(task_obj.split(split))) if limit else len(task_obj.split(split))
    with (
        open_registry() as registry,
        _item_progress(f"pass 1 ({strategy}) {task_obj.name}/{split}", quiet=as_json) as progress,
    ):
        bar = progress.add_task("dispatch", total=total)
        result = evaluate_strategy(
            registry,
            task_obj,
            strategy,
            model=model,
            split=split,
            limit=limit,
            batch_size=batch_size,
            max_new_tokens=max_new_tokens,
            device=device,
            on_item=lambda k: progress.advance(bar, k),
            pass1=pass1,
            **routing,
        )
    if as_json:
        print_json(asdict(result))
        return
    table = Table(title=f"{task_obj.name} ({split}), strategy {strategy}")
    for column in ("routed to", "items"):
        table.add_column(column)
    for choice, count in sorted(result.routing.items(), key=lambda kv: -kv[1]):
        table.add_row(choice, str(count))
    out.print(table)
    out.print(
        f"accuracy {result.accuracy:.1%} ({result.correct}/{result.n}), 95% CI [{result.ci_low:.1%}, {result.ci_high:.1%}]; "
        f"pass 1 {result.dispatch_seconds:.0f} s, total {result.seconds:.0f} s"
    )


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
