"""``t2 db``: where the registry lives, what it holds, and whether its blobs are intact."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn
from rich.table import Table

from t2cli.cli.console import err, human_bytes, out, print_json, progress_bar
from t2cli.cli.options import JsonOpt

app = typer.Typer(
    help="The registry database and blob store.",
    epilog="Examples:  t2 db status  ·  t2 db verify  ·  t2 db gc --dry-run",
    no_args_is_help=True,
)


@app.command("path")
def path_cmd(as_json: JsonOpt = False) -> None:
    """Print the home directory (set T2_HOME to move it).

    Example: T2_HOME=/data/t2 t2 db path
    """
    from t2cli.home import t2_home  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    if as_json:
        print_json({"home": str(t2_home())})
        return
    out.print(str(t2_home()), markup=False)


@app.command("status")
def status_cmd(as_json: JsonOpt = False) -> None:
    """Show the schema revision, row counts and blob store size.

    Example: t2 db status
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        status = registry.status()
    if as_json:
        print_json(asdict(status))
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
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with (
        open_registry() as registry,
        progress_bar(
            TextColumn("verifying blobs"),
            BarColumn(),
            MofNCompleteColumn(),
            quiet=as_json,
            transient=True,
        ) as progress,
    ):
        task = progress.add_task("verify", total=None)
        report = registry.verify(progress=lambda done, total: progress.update(task, completed=done, total=total))
    problems = len(report.missing) + len(report.corrupt)
    if as_json:
        print_json(asdict(report))
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
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed, and remove nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove blobs nothing refers to and run folders no run owns (never a referenced blob or a live run).

    A folder under $T2_HOME/runs/ with no row in the registry (a run removed by hand, or one
    whose start failed) is an orphan unless a process holds its lock.

    Example: t2 db gc --dry-run
    """
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.train.run_removal import remove_orphan_run_folders  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        folders = remove_orphan_run_folders(registry, dry_run=dry_run)
        blobs = registry.gc(dry_run=dry_run)
    if as_json:
        print_json({"dry_run": dry_run, "blobs": blobs, "run_folders": [str(f) for f in folders]})
        return
    verb = "would remove" if dry_run else "removed"
    for sha in blobs if dry_run else []:
        out.print(f"{verb} blob {sha}", markup=False)
    for folder in folders:
        out.print(f"{verb} run folder {folder}", markup=False)
    out.print(f"{verb} {len(blobs)} blobs and {len(folders)} run folders", markup=False)
