"""The ``t2`` command: a root app that wires the command groups and owns the error boundary.

Every error reaches the user as ``error: <what and why>`` plus ``hint: <what to do>``:
engine errors, and the parser's own (unknown option, missing argument, bad choice,
mistyped command). Exit codes: 2 for usage and value errors, 1 for runtime failures,
130 for Ctrl-C. A reader of stdout that went away (``t2 ... | head``) is no error:
Click exits 1 quietly. Set ``T2_DEBUG=1`` to get the traceback instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from typer.core import TyperGroup

from t2cli import __version__
from t2cli.cli.commands import (
    adapt,
    ask,
    bank,
    db,
    decompose,
    evaluate,
    experts,
    mix,
    models,
    router,
    runs,
    serve,
    share,
    tasks,
    train,
    transfer,
)
from t2cli.cli.console import err
from t2cli.errors import T2Error, UsageError

if TYPE_CHECKING:
    # What TyperGroup.invoke receives: the vendored click's Context, which typer.Context subclasses
    # (Typer exports only the subclass). A name for the type checker only.
    from typer._click import Context as ClickContext


def _debug() -> bool:
    return os.environ.get("T2_DEBUG", "") not in ("", "0")


def report_error(message: str, hint: str | None) -> None:
    """Print one error line (and a hint line) on stderr; the texts are shown verbatim (no Rich markup)."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, highlight=False)
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}", markup=True, highlight=False)


class CommandGroup(TyperGroup):
    """A command group whose unknown sub-command is a one-line usage error with a "did you mean"."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:  # ctx: the click Context Typer vendors
        from t2cli.svf.names import did_you_mean  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (<1 ms)

        name = args[0] if args else ""
        if args and self.get_command(ctx, name) is None and not ctx.resilient_parsing and not name.startswith("-"):
            hint = did_you_mean(name, self.list_commands(ctx)) or f"see `{ctx.command_path} --help`"
            raise UsageError(f"no command {name!r} in `{ctx.command_path}`", hint)
        return super().resolve_command(ctx, args)


class T2Group(CommandGroup):
    """Root group: ``main`` and ``invoke`` map every known error to one line and an exit code."""

    def main(  # type: ignore[override]
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **kw: Any,
    ) -> Any:
        """Parse errors (a ``typer.TyperException`` with ``exit_code`` 2) print as one ``error:`` line, not a panel."""
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **kw)
        try:
            code = super().main(
                args, prog_name, complete_var, standalone_mode=False, **kw
            )  # an Exit comes back as its code
        except typer.Abort:
            report_error("aborted", None)
            sys.exit(1)
        except typer.TyperException as exc:
            if _debug():
                raise
            ctx = getattr(exc, "ctx", None)
            if type(exc).__name__ != "NoArgsIsHelpError":  # `t2` alone: the help is already printed
                message, suggestion = _sentence(exc.format_message())
                where = f"`{ctx.command_path} --help`" if ctx is not None else "`t2 --help`"
                report_error(message, suggestion or f"see {where}")
            sys.exit(exc.exit_code)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx: ClickContext) -> Any:
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


def _sentence(text: str) -> tuple[str, str | None]:
    """Click's "No such option: --foo Did you mean --food?" as ("no such option: --foo", "did you mean --food?")."""
    line = " ".join(text.split())
    line, _, suggestion = line.partition(" Did you mean ")
    line = line.rstrip(".")
    line = line[:1].lower() + line[1:] if line[:2] != line[:2].upper() else line
    return line, f"did you mean {suggestion}" if suggestion else None


app = typer.Typer(
    name="t2",
    cls=T2Group,
    help="Transformer-Squared for working ML engineers: decompose a model's weights once, train "
    "SVF experts, and answer prompts with self-adapted weights.",
    epilog="Examples:  t2 decompose   ·   t2 train --task addition --name add-v1   ·   "
    't2 ask "What is 38 + 47?" --strategy prompt   ·   t2 experts list   ·   T2_DEBUG=1 t2 ... for tracebacks',
    no_args_is_help=True,
    pretty_exceptions_enable=False,
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
    decompose.register(app)
    train.register(app)
    evaluate.register(app)
    ask.register(app)
    mix.register(app)
    adapt.register(app)
    transfer.register(app)
    share.register(app)
    serve.register(app)
    tasks.register(app)
    app.add_typer(models.app, name="models", cls=CommandGroup)
    app.add_typer(experts.app, name="experts", cls=CommandGroup)
    app.add_typer(runs.app, name="runs", cls=CommandGroup)
    app.add_typer(router.app, name="router", cls=CommandGroup)
    app.add_typer(bank.app, name="bank", cls=CommandGroup)
    app.add_typer(db.app, name="db", cls=CommandGroup)


_register_commands()


def main() -> None:
    """Console-script entry point."""
    app()
