"""``t2 runs``: training runs, their metrics and learning curves."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from t2cli.cli.console import err, out
from t2cli.cli.options import JsonOpt

app = typer.Typer(help="Training runs and their learning curves.", no_args_is_help=True)


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List training runs, newest first.

    Example: t2 runs list
    """
    from t2cli.home import open_registry
    from t2cli.train.runs import list_runs

    with open_registry() as registry:
        runs = list_runs(registry)
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in runs]))
        return
    if not runs:
        out.print("No training runs yet: `t2 train --task addition` starts one.")
        return
    table = Table(title="Training runs")
    table.add_column("run", no_wrap=True)  # the id is what `t2 runs show` takes: never cut it
    for column in ("task", "status", "expert", "steps", "started"):
        table.add_column(column)
    for r in runs:
        table.add_row(r.run_id, r.task, r.status, r.expert or "-", str(r.config.get("steps")), r.started_at[:19])
    out.print(table)


@app.command("show")
def show_cmd(
    run_id: Annotated[str, typer.Argument(help="Run id (see `t2 runs list`).")],
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the learning curve to this PNG file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run's per-step metrics; --plot draws reward and validation accuracy vs step.

    Example: t2 runs show run-20261123-101500-ab12 --plot curve.png
    """
    from t2cli.home import open_registry
    from t2cli.train.runs import get_run, plot_learning_curve

    with open_registry() as registry:
        run = get_run(registry, run_id)
    if as_json:
        out.print_json(json.dumps(asdict(run)))
    else:
        out.print(f"[bold]{run.run_id}[/] task={run.task} status={run.status} expert={run.expert or '-'}")
        table = Table(title="Per-step metrics")
        names = ("reward", "accuracy", "loss", "grad_norm", "lr", "tokens_per_s", "seconds", "valid_accuracy")
        headers = ("reward", "rollout acc", "loss", "grad", "lr", "tok/s", "s", "valid acc")
        table.add_column("step", justify="right", no_wrap=True, min_width=4)
        for header in headers:
            table.add_column(header, justify="right", no_wrap=True, overflow="ignore")
        steps = sorted({s for values in run.metrics.values() for s in values})
        for step in steps:
            table.add_row(str(step), *(_fmt(run.metrics.get(n, {}).get(step)) for n in names))
        out.print(table)
    if plot is not None:
        written = plot_learning_curve(run, plot)
        (err if as_json else out).print(f"learning curve written to {written}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
