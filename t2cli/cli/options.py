"""Arguments and options shared by several commands, declared once, and their shell completions.

One grammar for every command: the base model is ``--model/-m`` (a positional MODEL only where
the model is the command's object: ``t2 decompose MODEL``, ``t2 models show MODEL``),
``--device`` defaults to ``auto``, ``--batch-size`` is the number of sequences per generate()
call, ``--json`` prints one JSON object (or JSON lines for a stream) on stdout, and every
``--name`` of a new expert follows one rule (``t2cli.svf.names``), checked before any work starts.

The completion functions run on every <TAB>: they import neither torch nor transformers.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from t2cli.cli.console import err


def complete_experts(incomplete: str) -> list[str]:
    """Registered expert names that start with ``incomplete`` (none when the registry cannot be read)."""
    try:
        from t2cli.experts.catalog import list_experts  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
        from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

        with open_registry() as registry:
            return [e.name for e in list_experts(registry) if e.name.startswith(incomplete)]
    except Exception:  # completion must never print a traceback into the shell
        return []


def complete_tasks(incomplete: str) -> list[str]:
    """Task names and aliases that start with ``incomplete``."""
    from t2cli.tasks import task_names  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)

    return [n for n in task_names() if n.startswith(incomplete.lower())]


def complete_models(incomplete: str) -> list[str]:
    """Model aliases that start with ``incomplete`` (paths are the shell's to complete)."""
    from t2cli.models.resolve import ALIASES  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    return [n for n in ALIASES if n.startswith(incomplete)]


def _check_name(value: str | None) -> str | None:
    """Parse-time check of ``--name``: the expert name rule, before anything is loaded or trained."""
    if value is None:
        return None
    from t2cli.svf.names import check_expert_name  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (<1 ms)

    return check_expert_name(value)


def name_option(help: str) -> Any:
    """``--name/-n`` of the expert a command registers, validated when parsed."""
    return typer.Option("--name", "-n", help=help, callback=_check_name, show_default=False)


ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="An alias (see `t2 models list`), a local Hugging Face folder, a .gguf file or a Hub id. "
        "Default: the embedded SmolLM2-135M-Instruct.",
        show_default=False,
        autocompletion=complete_models,
    ),
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Base model: an alias (see `t2 models list`), a local folder, a .gguf file or a Hub id. "
        "Default: the expert's base model where there is one, else the embedded SmolLM2-135M-Instruct.",
        show_default=False,
        autocompletion=complete_models,
    ),
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA if available, else CPU), cpu, cuda or cuda:N.")]
BatchSizeOpt = Annotated[
    int,
    typer.Option(
        "--batch-size",
        min=1,
        help="Sequences per generate() call (per process): bounds memory, not results.",
    ),
]
MaxNewTokensOpt = Annotated[
    int | None,
    typer.Option(
        "--max-new-tokens",
        min=1,
        help="Generation budget per answer, in tokens (default: the task's, see `t2 tasks`).",
        show_default=False,
    ),
]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Base weights' dtype: auto (bfloat16 on CUDA, as stored on CPU), float32, bfloat16 or float16. "
        "SVD factors, deltas and z stay float32.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout (shapes: docs/cli.md).")]
ExpertArg = Annotated[
    str,
    typer.Argument(help="Expert name (see `t2 experts list`).", show_default=False, autocompletion=complete_experts),
]
ExpertOpt = Annotated[
    str | None,
    typer.Option("--expert", "-e", help="Expert name (see `t2 experts list`).", autocompletion=complete_experts),
]
TaskOpt = Annotated[
    str,
    typer.Option(
        "--task",
        "-t",
        help="A task name (`t2 tasks` lists them all: gsm8k|math, arc-easy|reasoning, mbpp|code, addition, "
        "python-types, possession, ...), dispatch (built from the registered experts) or a .jsonl file.",
        show_default=False,
        autocompletion=complete_tasks,
    ),
]


def deprecated_alias(old: str, new: str) -> None:
    """One warning line on stderr for an old option spelling that still works."""
    err.print(f"warning: {old} is deprecated, use {new}", markup=False)


RouterOpt = Annotated[
    str | None,
    typer.Option("--router", help="router/router-soft: the router to use (default: the latest of the base model)."),
]
RouterTemperatureOpt = Annotated[
    float,
    typer.Option("--router-temperature", help="router-soft: temperature of the class probabilities (> 0)."),
]
TopKOpt = Annotated[
    int | None,
    typer.Option("--top-k", help="router-soft: mix only the k likeliest classes (>= 1).", show_default=False),
]
