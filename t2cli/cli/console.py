"""The two Rich consoles t2 writes to, and small rendering helpers."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.progress import Progress

# Results go to stdout; errors, warnings and progress to stderr so `--json` output stays clean.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def human_bytes(size: float) -> str:
    """1536 -> '1.5 KiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def progress_bar(*columns: Any, quiet: bool = False, transient: bool = False) -> Progress:
    """The one place that decides whether a progress bar is drawn: on stderr, and only when stderr is a terminal.

    ``quiet``: off anyway (``--json``, or not the rank that reports). Logs and pipes get no bar frames;
    commands that run long print one plain line per step instead.
    """
    return Progress(*columns, console=err, disable=quiet or not err.is_terminal, transient=transient)


def print_json(value: Any) -> None:
    """``--json`` output: one JSON object on one line of stdout (a stream prints one such line per event)."""
    typer.echo(json.dumps(value, default=str, ensure_ascii=False))
