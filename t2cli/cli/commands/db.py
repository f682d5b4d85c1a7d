"""``t2 db``: where the registry lives, what it holds, and whether its blobs are intact."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from t2cli.cli.console import err, human_bytes, out
from t2cli.cli.options import JsonOpt

app = typer.Typer(help="The registry database and blob store.", no_args_is_help=True)


@app.command("path")
def path_cmd() -> None:
    """Print the home directory (set T2_HOME to move it).

    Example: T2_HOME=/data/t2 t2 db path
    """
    from t2cli.home import t2_home

    out.print(str(t2_home()))


@app.command("status")
def status_cmd(as_json: JsonOpt = False) -> None:
    """Show the schema revision, row counts and blob store size.

    Example: t2 db status
    """
    from t2cli.home import open_registry

    with open_registry() as registry:
        status = registry.status()
    if as_json:
        out.print_json(json.dumps(asdict(status), default=str))
        return
    out.print(f"home: {registry.home}")
    out.print(f"database: {status.db_path} ({human_bytes(status.db_bytes)}), schema revision {status.revision}")
    out.print(f"blobs: {status.blob_count} files, {human_bytes(status.blob_bytes)}")
    table = Table(title="Rows")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in sorted(status.rows.items()):
        table.add_row(name, str(count))
    out.print(table)


@app.command("verify")
def verify_cmd(as_json: JsonOpt = False) -> None:
    """Re-hash every blob and check that every referenced blob exists. Exit 1 on any problem.

    Example: t2 db verify
    """
    from t2cli.home import open_registry

    with (
        open_registry() as registry,
        Progress(
            TextColumn("verifying blobs"),
            BarColumn(),
            MofNCompleteColumn(),
            console=err,
            disable=as_json or not err.is_terminal,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("verify", total=None)
        report = registry.verify(progress=lambda done, total: progress.update(task, completed=done, total=total))
    problems = len(report.missing) + len(report.corrupt)
    if as_json:
        out.print_json(json.dumps(asdict(report), default=str))
    else:
        out.print(
            f"checked {report.checked} blobs: {len(report.missing)} missing, {len(report.corrupt)} corrupt, "
            f"{len(report.orphans)} orphan files, {len(report.unreferenced)} unreferenced"
        )
        for sha in report.missing:
            out.print(f"[red]missing[/] {sha}")
        for sha in report.corrupt:
            out.print(f"[red]corrupt[/] {sha}")
        if problems:
            err.print("hint: re-run the command that made them (e.g. `t2 decompose` recomputes missing factors)")
        elif report.orphans or report.unreferenced:
            out.print("run `t2 db gc` to free unreferenced blobs")
    if problems:
        raise typer.Exit(1)


@app.command("gc")
def gc_cmd(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed.")] = False,
) -> None:
    """Remove blobs nothing refers to (never a referenced one).

    Example: t2 db gc --dry-run
    """
    from t2cli.home import open_registry

    with open_registry() as registry:
        removed = registry.gc(dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    out.print(f"{verb} {len(removed)} blobs")
