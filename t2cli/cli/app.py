"""The ``t2`` command: a root app that wires the command groups and owns the error boundary.

Every engine error reaches the user as ``error: <what and why>`` plus
``hint: <what to do>``, exit code 1 (2 for usage errors, 130 for Ctrl-C). A reader
of stdout that went away (``t2 ... | head``) is no error: Click exits 1 quietly. Set
``T2_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import os
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from t2cli import __version__
from t2cli.cli.console import err
from t2cli.errors import T2Error


def _debug() -> bool:
    return os.environ.get("T2_DEBUG", "") not in ("", "0")


def report_error(message: str, hint: str | None) -> None:
    """Print one error line (and a hint line) on stderr; the texts are shown verbatim (no Rich markup)."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}", markup=True, highlight=False)


class T2Group(TyperGroup):
    """Root group whose ``invoke`` maps every known error to one line and an exit code."""

    def invoke(self, ctx: typer.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own exits and usage errors
            raise
        except T2Error as exc:  # the registry's errors are T2Errors too
            if _debug():
                raise
            report_error(exc.message, exc.hint)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:  # Click's main() silences EPIPE and exits 1; not a bug to report
            raise
        except KeyboardInterrupt:
            if _debug():
                raise
            report_error("interrupted", "nothing half-written was kept; run the command again")
            ctx.exit(130)
        except Exception as exc:  # a bug: say so in one line, keep the traceback behind T2_DEBUG
            if _debug():
                raise
            text = str(exc).splitlines()[0] if str(exc) else ""
            report_error(
                f"unexpected {type(exc).__name__}: {text}",
                "this is a bug in t2; run again with T2_DEBUG=1 for the traceback and report it",
            )
            ctx.exit(1)


app = typer.Typer(
    name="t2",
    cls=T2Group,
    help="Transformer-Squared for working ML engineers: decompose a model's weights once, train "
    "SVF experts, and answer prompts with self-adapted weights.",
    epilog="Examples:  t2 decompose   ·   t2 train --task addition --name add-v1   ·   "
    't2 ask "What is 38 + 47?" --strategy prompt   ·   t2 experts list   ·   T2_DEBUG=1 t2 ... for tracebacks',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"t2 {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", "-V", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """Transformer-Squared: self-adaptive LLMs from the command line."""


def _register_commands() -> None:
    from t2cli.cli.commands import (
        adapt,
        ask,
        db,
        decompose,
        evaluate,
        experts,
        mix,
        models,
        runs,
        share,
        train,
        transfer,
    )

    decompose.register(app)
    train.register(app)
    evaluate.register(app)
    ask.register(app)
    mix.register(app)
    adapt.register(app)
    transfer.register(app)
    share.register(app)
    app.add_typer(models.app, name="models")
    app.add_typer(experts.app, name="experts")
    app.add_typer(runs.app, name="runs")
    app.add_typer(db.app, name="db")


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
