"""``t2 tasks``: the built-in tasks, their split sizes, answer kinds and data sources."""

from __future__ import annotations

from typing import Any

import typer
from rich.table import Table

from t2cli.cli.console import out, print_json
from t2cli.cli.options import JsonOpt


def tasks_cmd(as_json: JsonOpt = False) -> None:
    """List the built-in tasks: aliases, category, answer kind (its scorer), split sizes, generation budget, data.

    Any task also takes a .jsonl file of your own (docs/tasks.md); `dispatch` is built from
    the registered experts, so it has no fixed splits to list.

    Examples:

      t2 tasks

      t2 tasks --json | jq '.tasks[].name'
    """
    from t2cli.tasks import list_tasks  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)

    rows: list[dict[str, Any]] = []
    for task in list_tasks():
        sizes = task.split_sizes()
        rows.append(
            {
                "name": task.name,
                "aliases": list(task.aliases),
                "category": task.category,
                "answer_kind": task.split("test")[0].kind,
                "splits": sizes,
                "max_new_tokens": task.max_new_tokens,
                "source": task.source,
                "description": task.description,
            }
        )
    if as_json:
        print_json({"tasks": rows})
        return
    table = Table(title="Tasks (t2 train/eval --task NAME)")
    for column in ("task", "aliases", "category", "answer", "train", "valid", "test", "budget"):
        table.add_column(
            column, justify="right" if column in ("train", "valid", "test", "budget") else "left", no_wrap=True
        )
    table.add_column("data (full text: --json)", no_wrap=True, overflow="ellipsis", max_width=30)
    for row in rows:
        table.add_row(
            row["name"],
            ", ".join(row["aliases"]) or "-",
            row["category"],
            row["answer_kind"],
            *(str(row["splits"][s]) for s in ("train", "valid", "test")),
            str(row["max_new_tokens"]),
            row["source"],
        )
    out.print(table)
    out.print(
        "Also: dispatch (built from the registered experts), textvqa and okvqa (read from the HF cache when"
        " their files are there) and any .jsonl task file (docs/tasks.md)."
    )


def register(app: typer.Typer) -> None:
    app.command("tasks")(tasks_cmd)
