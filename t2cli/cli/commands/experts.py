"""``t2 experts``: list, show and remove registered SVF experts."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from t2cli.cli.console import out, print_json
from t2cli.cli.options import ExpertArg, JsonOpt

app = typer.Typer(
    help="Registered SVF experts and their lineage.",
    epilog="Examples:  t2 experts list  ·  t2 experts show add-v1  ·  t2 experts tag add-v1 reviewed",
    no_args_is_help=True,
)


@app.command("list")
def list_cmd(as_json: JsonOpt = False) -> None:
    """List registered experts.

    Example: t2 experts list --json
    """
    from t2cli.experts.catalog import for_json, list_experts  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        experts = list_experts(registry)
    if as_json:
        print_json({"experts": [for_json(e) for e in experts]})
        return
    if not experts:
        out.print("No experts registered yet. Train one with `t2 train --task math` (see README).")
        return
    table = Table(title="Experts")
    for column in ("name", "kind", "base model", "task", "parents", "best accuracy"):
        table.add_column(column)
    for e in experts:
        best = max((ev.accuracy for ev in e.evaluations), default=None)
        table.add_row(
            e.name,
            e.kind,
            e.base_model,
            e.task or "-",
            ", ".join(p[0] for p in e.parents) or "-",
            f"{best:.1%}" if best is not None else "-",
        )
    out.print(table)


@app.command("show")
def show_cmd(name: ExpertArg, as_json: JsonOpt = False) -> None:
    """Show one expert: base model, task, lineage, tags and evaluations.

    Example: t2 experts show math-v1
    """
    from t2cli.experts.catalog import for_json, get_expert  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        e = get_expert(registry, name)
    if as_json:
        print_json(for_json(e))
        return
    out.print(f"[bold]{e.name}[/]  kind={e.kind}  base={e.base_model}  task={e.task or '-'}  created={e.created_at}")
    if e.description:
        out.print(e.description)
    for parent, weight, relation in e.parents:
        out.print(f"parent: {parent} ({relation}{'' if weight is None else f', weight {weight:g}'})")
    for child in e.children:
        out.print(f"child: {child}")
    if e.tags:
        out.print("tags: " + ", ".join(e.tags))
    if e.evaluations:
        table = Table(title="Evaluations")
        for column in ("task", "split", "n", "accuracy", "95% CI", "base accuracy", "base 95% CI"):
            table.add_column(column)
        for ev in e.evaluations:
            base = ev.base
            table.add_row(
                ev.task,
                ev.split,
                str(ev.n),
                f"{ev.accuracy:.1%}",
                f"[{ev.ci_low:.1%}, {ev.ci_high:.1%}]",
                f"{base.accuracy:.1%}" if base else "-",
                f"[{base.ci_low:.1%}, {base.ci_high:.1%}]" if base else "(run t2 eval --base)",
            )
        out.print(table)


@app.command("rm")
def rm_cmd(
    name: ExpertArg,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove an expert from the registry (its blob is freed by `t2 db gc`).

    Example: t2 experts rm math-v1 --yes
    """
    from t2cli.experts.catalog import get_expert, remove_expert  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        get_expert(registry, name)
        if not yes and not typer.confirm(f"Remove expert {name!r}?", default=False):
            raise typer.Exit(1)
        remove_expert(registry, name)
    if as_json:
        print_json({"removed": name})
        return
    out.print(f"Removed expert {name!r}. Run `t2 db gc` to free its file.")


@app.command("tag")
def tag_cmd(
    name: ExpertArg,
    tags: Annotated[list[str], typer.Argument(help="One or more tags (one word each).", show_default=False)],
    remove: Annotated[bool, typer.Option("--remove", help="Remove these tags instead of adding them.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Add tags to an expert (or remove them with --remove); `t2 experts show` lists them.

    Examples:

      t2 experts tag add-v1 reviewed arithmetic

      t2 experts tag add-v1 reviewed --remove
    """
    from t2cli.experts.tags import tag_expert  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~1 ms)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        result = tag_expert(registry, name, tags, remove=remove)
    if as_json:
        print_json(asdict(result))
        return
    changed = result.removed if remove else result.added
    verb = "removed" if remove else "added"
    out.print(
        f"{result.expert}: {verb} {', '.join(changed) or 'nothing'}; tags now: {', '.join(result.tags) or '-'}",
        markup=False,
    )
