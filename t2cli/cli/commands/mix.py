"""``t2 mix``: register a weighted mixture of experts as a new expert."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from t2cli.cli.console import out, print_json
from t2cli.cli.options import JsonOpt, complete_experts, name_option
from t2cli.errors import UsageError


def parse_weights(text: str | None) -> list[float] | None:
    """'0.5,0.5' -> [0.5, 0.5]; a UsageError naming the piece that is not a number."""
    if text is None:
        return None
    weights = []
    for piece in text.split(","):
        try:
            weights.append(float(piece.strip()))
        except ValueError:
            raise UsageError(
                f"--weights {text!r}: {piece.strip()!r} is not a number", "e.g. --weights 0.5,0.5"
            ) from None
    return weights


def mix_cmd(
    experts: Annotated[
        list[str],
        typer.Argument(
            help="Two or more expert names (see `t2 experts list`).",
            show_default=False,
            autocompletion=complete_experts,
        ),
    ],
    weights: Annotated[
        str | None,
        typer.Option(
            "--weights", "-w", help="Comma-separated weights, one per expert (default: 1/K each).", show_default=False
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="linear (z' = sum a_k z_k, a_k >= 0) or task-arithmetic (z' = 1 + sum a_k (z_k - 1), a_k may be < 0).",
        ),
    ] = "linear",
    name: Annotated[str | None, name_option("Name of the mixture (default: mix-A-B...).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Mix experts of one base model into a new expert (kind "mixture", parents recorded).

    Mixing works on the stored multipliers z; no model is loaded.

    Examples:

      t2 mix math-v1 code-v1 --weights 0.7,0.3 --name math-code

      t2 mix math-v1 code-v1 reasoning-v1            # equal weights 1/3

      t2 mix math-v1 code-v1 --method task-arithmetic --weights 1.0,-0.5
    """
    from t2cli.experts.mixing import mix_experts  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    parsed = parse_weights(weights)
    with open_registry() as registry:
        result = mix_experts(registry, experts, parsed, method=method, name=name)
    if as_json:
        print_json(asdict(result))
        return
    shown = ", ".join(f"{e} x {w:g}" for e, w in zip(result.experts, result.weights))
    out.print(
        f"expert [bold]{result.name}[/] registered: {result.method} mixture ({result.formula}) of {shown}, "
        f"{result.num_matrices} matrices, base {result.base_model}"
    )
    out.print(f"next: t2 eval --task TASK --expert {result.name}   ·   t2 experts show {result.name}")


def register(app: typer.Typer) -> None:
    app.command("mix")(mix_cmd)
