"""``t2 transfer``: apply an expert made for one base model to another."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.table import Table

from t2cli.cli.console import err, out, print_json
from t2cli.cli.options import DeviceOpt, ExpertArg, JsonOpt, complete_models, name_option


def transfer_cmd(
    expert: ExpertArg,
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="Target base model: alias, folder, .gguf file or Hub id.",
            show_default=False,
            autocompletion=complete_models,
        ),
    ],
    name: Annotated[str | None, name_option("Name of the new expert (default: EXPERT-to-MODEL).")] = None,
    shuffle: Annotated[
        bool, typer.Option("--shuffle", help="Control: permute every transferred z (singular order destroyed).")
    ] = False,
    seed: Annotated[int, typer.Option(help="Seed of the --shuffle permutation.")] = 0,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Transfer EXPERT to another base model (kind "transferred", parent recorded).

    Same shapes: z is copied. Different depth: layers are mapped by relative depth
    (linear between the two nearest source layers). Different rank: z is resampled over
    the relative position in the singular spectrum. Roles the expert does not adapt keep
    z = 1. The target model is decomposed first if needed. Language-model experts move
    between vision-language and text models; vision tower and projector experts move
    only to models with the same roles (refused otherwise).

    Examples:

      t2 transfer math-v1 --to mistral-7b

      t2 transfer add-v1 --to ./gemma-3-270m.gguf --name add-gemma

      t2 transfer add-v1 --to ./gemma-3-270m.gguf --shuffle      # the shuffled-order control
    """
    from t2cli.experts.transfer import transfer_expert  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        err.print(f"loading {to} (decomposing it first if needed)...")
        result = transfer_expert(registry, expert, to, name=name, shuffle=shuffle, seed=seed, device=device)
    if as_json:
        print_json(asdict(result))
        return
    s = result.summary
    table = Table(
        title=f"{result.source} -> {result.target_model}" + (" (shuffled control)" if result.shuffled else "")
    )
    for column in (
        "target matrices",
        "mapped",
        "coverage",
        "direct",
        "depth-interpolated",
        "rank-resampled",
        "left at z = 1",
        "layers (source -> target)",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(s["target_matrices"]),
        str(s["mapped"]),
        f"{s['coverage']:.0%}",
        str(s["direct"]),
        str(s["depth_interpolated"]),
        str(s["rank_resampled"]),
        str(s["uncovered"]),
        f"{s['source_layers']} -> {s['target_layers']}"
        + (
            f" (vision tower {s['source_vision_layers']} -> {s['target_vision_layers']})"
            if "source_vision_layers" in s
            else ""
        ),
    )
    out.print(table)
    out.print(f"expert [bold]{result.name}[/] registered (kind transferred, parent {result.source})")
    out.print(f"next: t2 eval --task TASK --expert {result.name}")


def register(app: typer.Typer) -> None:
    app.command("transfer")(transfer_cmd)
