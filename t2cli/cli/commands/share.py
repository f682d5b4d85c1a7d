"""``t2 export``, ``t2 import``, ``t2 push``, ``t2 pull``: move experts between machines and tools."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from t2cli.cli.console import err, out, print_json
from t2cli.cli.options import DeviceOpt, ExpertArg, JsonOpt, complete_models, name_option
from t2cli.errors import UsageError

NameOpt = Annotated[str | None, name_option("Register under this name (default: the name it was shared under).")]
BaseModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="The expert's base model, when it is not registered here yet "
        "(alias, folder, .gguf or Hub id); its weights must have the expert's fingerprint.",
        autocompletion=complete_models,
    ),
]


def export_cmd(
    expert: ExpertArg,
    folder: Annotated[Path, typer.Argument(help="Folder to create (must not exist).", show_default=False)],
    merged: Annotated[
        bool, typer.Option("--merged", help="Write a standalone HF model with the expert folded in.")
    ] = False,
    lora: Annotated[bool, typer.Option("--lora", help="Write a PEFT LoRA adapter (see --rank).")] = False,
    rank: Annotated[
        int | None, typer.Option("--rank", "-r", help="LoRA rank (default 16).", show_default=False)
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            "--model",
            "-m",
            help="Where the base model is, if not where it was registered.",
            autocompletion=complete_models,
        ),
    ] = None,
    device: DeviceOpt = "auto",
    as_json: JsonOpt = False,
) -> None:
    """Write an expert to FOLDER: expert folder, merged model or LoRA adapter.

    Default: the three-file expert folder (expert.safetensors,
    expert_config.json, README.md) that `t2 import` reads. --merged folds
    the expert into the base weights: a Hugging Face model folder any tool
    loads. --lora writes the best rank-R approximation of the expert's
    weight change as a PEFT LoRA adapter (vLLM, TGI, PEFT) and prints the
    relative error it leaves.

    Examples:

      t2 export math-v1 ./math-v1

      t2 export math-v1 ./math-v1-merged --merged

      t2 export math-v1 ./math-v1-lora --lora --rank 32
    """
    from t2cli.experts.export import export_expert, export_lora, export_merged  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    if merged and lora:
        raise UsageError("--merged and --lora exclude each other", "pick one export format")
    if rank is not None and not lora:
        raise UsageError("--rank applies to --lora exports", f"t2 export {expert} {folder} --lora --rank {rank}")
    with open_registry() as registry:
        if merged:
            err.print(f"loading the base model of {expert}...")
            result = export_merged(registry, expert, folder, model=model, device=device)
            summary = asdict(result)
            text = (
                f"wrote {result.folder}: {result.base_model} with {expert} folded into {result.num_matrices} "
                f"matrices ({result.dtype}); load it with {result.auto_class}.from_pretrained"
            )
        elif lora:
            adapter = export_lora(registry, expert, folder, rank=16 if rank is None else rank, model=model)
            summary = asdict(adapter)
            text = (
                f"wrote {adapter.folder}: LoRA r={adapter.rank} over {adapter.num_matrices} matrices, "
                f"base {adapter.base_model_name_or_path}\n"
                f"relative error ||delta - delta_r|| / ||delta|| per matrix: min {adapter.min_error:.4f}, "
                f"median {adapter.median_error:.4f}, max {adapter.max_error:.4f}; overall {adapter.overall_error:.4f}"
            )
        else:
            path = export_expert(registry, expert, folder)
            summary = {"folder": str(path), "expert": expert, "files": sorted(p.name for p in path.iterdir())}
            text = f"wrote {path} ({', '.join(summary['files'])}); import it elsewhere with `t2 import {path}`"
    if as_json:
        print_json(summary)
    else:
        out.print(text, markup=False)


def import_cmd(
    folder: Annotated[Path, typer.Argument(help="An expert folder written by `t2 export`.", show_default=False)],
    name: NameOpt = None,
    model: BaseModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Validate an expert folder and register it (kind 'imported').

    Nothing is registered unless every check passes: only the three expert
    files (no pickles, code, symlinks or other files), a known format
    version, 1-D float vectors of sane size, and a base model here with the
    expert's weight fingerprint and shapes. See docs/sharing.md.

    Examples:

      t2 import ./math-v1

      t2 import ./math-v1 --name math-from-alice --model ./SmolLM2-135M-Instruct
    """
    from t2cli.experts.importing import import_expert  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        result = import_expert(registry, folder, name=name, model=model)
    _print_import(result, as_json)


def push_cmd(
    expert: ExpertArg,
    repo_id: Annotated[
        str, typer.Argument(help="Hub model repo, owner/name (created if missing).", show_default=False)
    ],
    private: Annotated[
        bool, typer.Option("--private", help="Create the repo private (an existing repo keeps its visibility).")
    ] = False,
    branch: Annotated[
        str | None,
        typer.Option("--branch", "--revision", help="Branch to commit to (created if missing; default main)."),
    ] = None,
    message: Annotated[str | None, typer.Option("--message", help="Commit message.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload an expert to the Hugging Face Hub: one commit of its three files.

    Uses the token of `hf auth login` or HF_TOKEN (never printed). The
    model card gives library_name t2, the base model, task, metrics and
    lineage.

    Examples:

      t2 push math-v1 alice/smollm2-math-svf

      t2 push math-v1 alice/smollm2-math-svf --private --branch v2
    """
    from t2cli.experts.hub import push_expert  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s) and huggingface_hub
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        result = push_expert(registry, expert, repo_id, private=private, branch=branch, message=message)
    if as_json:
        print_json(asdict(result))
        return
    out.print(
        f"pushed {expert} to {result.repo_id}@{result.branch} in commit {result.commit[:12]}: {result.commit_url}",
        markup=False,
    )
    out.print(f"pull it elsewhere with `t2 pull {result.repo_id}`", markup=False)


def pull_cmd(
    repo_id: Annotated[str, typer.Argument(help="Hub model repo, owner/name.", show_default=False)],
    revision: Annotated[str | None, typer.Option("--revision", help="Branch, tag or commit (default main).")] = None,
    name: NameOpt = None,
    model: BaseModelOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Download an expert from the Hub, validate it like `t2 import`, register it.

    Only expert.safetensors, expert_config.json and README.md are
    downloaded, into the HF cache; HF_HUB_OFFLINE=1 uses the cache alone.

    Examples:

      t2 pull alice/smollm2-math-svf

      t2 pull alice/smollm2-math-svf --revision v2 --name math-alice
    """
    from t2cli.experts.hub import pull_expert  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s) and huggingface_hub
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    with open_registry() as registry:
        result = pull_expert(registry, repo_id, revision=revision, name=name, model=model)
    _print_import(result, as_json)


def _print_import(result, as_json: bool) -> None:
    if result.unknown_keys:
        err.print(f"warning: ignored config keys this t2 does not know: {', '.join(result.unknown_keys)}", markup=False)
    if as_json:
        print_json(asdict(result))
        return
    out.print(
        f"imported {result.name} ({result.original_kind} expert '{result.original_name}', "
        f"{result.num_matrices} matrices) for {result.base_model} from {result.location}",
        markup=False,
    )
    out.print(f"next: t2 experts show {result.name}", markup=False)


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.command("push")(push_cmd)
    app.command("pull")(pull_cmd)
