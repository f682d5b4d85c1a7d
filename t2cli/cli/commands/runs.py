"""``t2 runs``: training runs, their metrics and learning curves."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from t2cli.cli.console import err, out, print_json
from t2cli.cli.options import JsonOpt

app = typer.Typer(
    help="Training runs and their learning curves.",
    epilog="Examples:  t2 runs list  ·  t2 runs show RUN --plot curve.png  ·  t2 runs rm RUN",
    no_args_is_help=True,
)
RunArg = Annotated[str, typer.Argument(help="Run id (see `t2 runs list`).", show_default=False)]


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List training runs, newest first.

    Example: t2 runs list
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.train.runs import list_runs  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)

    with open_registry() as registry:
        runs = list_runs(registry)
    if as_json:
        print_json({"runs": [asdict(r) for r in runs]})
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
    run_id: RunArg,
    plot: Annotated[Path | None, typer.Option("--plot", help="Write the learning curve to this PNG file.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Show a run's per-step metrics; --plot draws reward and validation accuracy vs step.

    Example: t2 runs show run-20261123-101500-ab12 --plot curve.png
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.train.runs import get_run, plot_learning_curve  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)

    with open_registry() as registry:
        run = get_run(registry, run_id)
    if as_json:
        print_json(asdict(run))
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


@app.command("rm")
def rm_cmd(
    run_id: RunArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a training run: its rows and its checkpoint folder (never the expert it registered).

    A run that a process is training now is refused.

    Example: t2 runs rm run-20261123-101500-ab12 --yes
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.train.run_removal import remove_run  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        plan = remove_run(registry, run_id, dry_run=True)  # checks it exists and is not being trained
        if not yes and not typer.confirm(f"Remove run {run_id} and its checkpoints?", default=False):
            raise typer.Exit(1)
        removed = remove_run(registry, run_id)
    if as_json:
        print_json(asdict(removed))
        return
    kept = f"; expert {plan.expert} is kept" if plan.expert else ""
    out.print(
        f"removed run {removed.run_id} ({removed.metric_rows} metric rows"
        f"{', folder ' + removed.folder if removed.folder else ''}){kept}",
        markup=False,
    )


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
