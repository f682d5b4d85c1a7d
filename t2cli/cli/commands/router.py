"""``t2 router``: train, list, show and remove the learned pass-1 routers (docs/router.md)."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from typing import Annotated

import typer
from rich.table import Table

from registry.errors import NameTaken, RouterNotFound
from t2cli.cli.console import err, out, print_json, progress_bar
from t2cli.cli.options import DeviceOpt, JsonOpt, ModelOpt, name_option
from t2cli.errors import UsageError
from t2cli.router.defaults import DEFAULT_POOLING, POOLINGS, TASK_POOLS

app = typer.Typer(
    help="Learned routers: pass 1 from the base model's hidden states (t2 ask --strategy router).",
    epilog="Examples:  t2 router train  ·  t2 router list  ·  t2 router show router-v1  ·  t2 router rm router-v1",
    no_args_is_help=True,
)
RouterArg = Annotated[str, typer.Argument(help="Router name (see `t2 router list`).", show_default=False)]
DEFAULT_NAME = "router"


def _layers(value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        layers = tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise UsageError(
            f"--layers must be comma-separated layer numbers (got {value!r})", "e.g. --layers 15"
        ) from None
    if not layers:
        raise UsageError("--layers names no layer", "e.g. --layers 15 or --layers 10,20")
    return layers


def _rebuild_command(
    model: str | None,
    experts: Sequence[str],
    name: str,
    layers: Sequence[int],
    pooling: str,
    per_class: int,
    pool: str,
    exclude: Sequence[str],
) -> str:
    """The command that rebuilds this router, with every choice spelled out."""
    words = ["t2", "router", "train", *(["--model", model] if model else [])]
    words += ["--experts", ",".join(experts), "--name", name, "--layers", ",".join(map(str, layers))]
    words += ["--pooling", pooling, "--per-class", str(per_class), "--task-pool", pool]
    words += ["--exclude-tasks", ",".join(exclude)] if exclude else []
    return shlex.join(words)


@app.command("train")
def train_cmd(
    model: ModelOpt = None,
    experts: Annotated[
        str | None,
        typer.Option("--experts", "-e", help="Comma-separated category experts (default: all of the base model's)."),
    ] = None,
    name: Annotated[str, name_option("Name of the router.")] = DEFAULT_NAME,
    replace: Annotated[bool, typer.Option("--replace", help="Replace a router of the same name.")] = False,
    layers: Annotated[
        str | None, typer.Option("--layers", help="Decoder layers whose states are read, e.g. 15 or 10,20.")
    ] = None,
    pooling: Annotated[str, typer.Option("--pooling", help="mean or last (token) over the prompt.")] = DEFAULT_POOLING,
    per_class: Annotated[int, typer.Option("--per-class", help="Training prompts per class.")] = 400,
    task_pool: Annotated[
        str,
        typer.Option(
            "--task-pool",
            help="Where a class's prompts come from: every built-in task of its category, or the expert's own task.",
        ),
    ] = "category",
    exclude_tasks: Annotated[
        str | None,
        typer.Option("--exclude-tasks", help="Comma-separated built-in tasks to keep out of the router's prompts."),
    ] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Train a router over the category experts of the base model and register it.

    Labels prompts of every built-in task of each expert's category (train split; `--task-pool
    expert`: the expert's own task only) with the category, plus `other` prompts no expert covers; reads their features with the base weights (one prefill each);
    fits a logistic regression (seconds). Prints the validation accuracy per class.

    Examples:

      t2 router train                                   # every category expert of the embedded model

      t2 router train --experts arith-v1,arc-v1 --name router-v2 --json

      t2 router train --exclude-tasks arc-challenge,arithmetic --name held-out   # for bench/t2_table.py
    """
    from registry.queries import routers as router_rows  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help`
    from t2cli.ask.engine import prepare_model, targets_for  # noqa: PLC0415 - CLI start-up: pulls torch and transformers (~4 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.router.model import FeatureRecipe  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.router.store import register_router  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.router.train import default_recipe, select_experts, train_router  # noqa: PLC0415 - CLI start-up: pulls torch and scikit-learn
    from t2cli.svf.adaptable import load_adaptable  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.tasks.lookup import get_task  # noqa: PLC0415 - CLI start-up: registers every built-in task

    if pooling not in POOLINGS:
        raise UsageError(f"unknown --pooling {pooling!r}", f"use one of: {', '.join(POOLINGS)}")
    if per_class < 10:
        raise UsageError(f"--per-class must be at least 10 (got {per_class})", "e.g. --per-class 400")
    if task_pool not in TASK_POOLS:
        raise UsageError(f"unknown --task-pool {task_pool!r}", f"use one of: {', '.join(TASK_POOLS)}")
    excluded = [t.strip() for t in exclude_tasks.split(",") if t.strip()] if exclude_tasks else []
    for task_name in excluded:
        get_task(task_name)  # an unknown name fails here, with its "did you mean"
    chosen_layers = _layers(layers)
    names = [n.strip() for n in experts.split(",") if n.strip()] if experts else None
    with open_registry() as registry:
        if not replace and router_rows.get(registry, name) is not None:
            raise NameTaken(f"a router named {name!r} already exists", "pick another --name, or add --replace")
        prepared = prepare_model(registry, model, None)
        if prepared.base_model_id is None:
            raise UsageError(
                f"no expert is registered for {prepared.model_name}",
                "train one first, e.g. `t2 train --task arithmetic --name math-v1`",
            )
        chosen = select_experts(registry, prepared.base_model_id, names)  # every check before loading
        depth = int(prepared.num_layers or 0)
        recipe = FeatureRecipe(chosen_layers, pooling) if chosen_layers else default_recipe(depth, pooling)
        bad = [i for i in recipe.layers if not -depth <= i < depth]
        if bad:
            raise UsageError(f"--layers {bad[0]} is outside the model's {depth} layers", f"use 0..{depth - 1}")
        adaptable = load_adaptable(
            registry, model, targets=targets_for(registry, prepared.base_model_id), device=device
        )
        with progress_bar(quiet=as_json, transient=True) as bar:
            task_id = bar.add_task("router features", total=None)

            def progress(stage: str, done: int, total: int) -> None:
                bar.update(task_id, completed=done, total=total, description=f"router {stage}")

            trained = train_router(
                registry,
                adaptable,
                name=name,
                experts=chosen,
                recipe=recipe,
                per_class={"train": per_class, "valid": max(per_class // 4, 10)},
                command=_rebuild_command(
                    model, [e.expert for e in chosen], name, recipe.layers, pooling, per_class, task_pool, excluded
                ),
                progress=progress,
                pool=task_pool,
                exclude_tasks=excluded,
            )
        register_router(registry, trained.router, base_model_id=adaptable.base_model_id, replace=replace)
    config = trained.router.config
    if as_json:
        print_json({"router": json.loads(config.to_json())})
        return
    out.print(
        f"router {config.name}: {len(config.classes)} classes, validation accuracy {config.valid_accuracy:.1%} "
        f"(features {trained.feature_seconds:.1f} s, fit {trained.fit_seconds:.1f} s)",
        markup=False,
    )
    table = Table(title="Validation accuracy per class")
    for column in ("class", "routes to", "accuracy"):
        table.add_column(column)
    for category in config.classes:
        accuracy = config.training["valid_accuracy_by_class"][category]
        table.add_row(category, config.expert_of(category) or "base weights", f"{accuracy:.1%}")
    out.print(table)


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List routers, oldest first, and whether each still matches its experts.

    Example: t2 router list
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.router.store import list_routers  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)

    with open_registry() as registry:
        rows = list_routers(registry)
    if as_json:
        print_json({"routers": [row.to_json() for row in rows]})
        return
    if not rows:
        out.print("No routers yet: `t2 router train` makes one from the registered experts.")
        return
    table = Table(title="Routers")
    for column in ("router", "base model", "classes", "valid acc", "status", "created"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.name,
            row.base_model,
            ", ".join(row.classes),
            "-" if row.valid_accuracy is None else f"{row.valid_accuracy:.1%}",
            "stale: " + row.stale if row.stale else "current",
            row.created_at[:19],
        )
    out.print(table)


@app.command("show")
def show_cmd(router: RouterArg, as_json: JsonOpt = False) -> None:
    """Show a router's config: features, classes, experts, training data and accuracy.

    Example: t2 router show router
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.router.store import describe_router  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)

    with open_registry() as registry:
        row, config = describe_router(registry, router)
    if as_json:
        print_json({**row.to_json(), "config": config})
        return
    out.print_json(data={**row.to_json(), "config": config})


@app.command("rm")
def rm_cmd(
    router: RouterArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a router (its file goes at the next `t2 db gc`).

    Example: t2 router rm router --yes
    """
    from registry.queries import routers as router_rows  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help`
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        if router_rows.get(registry, router) is None:
            raise RouterNotFound(f"no router named {router!r}", "list them with `t2 router list`")
        if not yes and not typer.confirm(f"Remove router {router}?", default=False):
            raise typer.Exit(1)
        router_rows.remove(registry, router)
    if as_json:
        print_json({"removed": router})
    else:
        err.print(f"removed router {router}", markup=False)
