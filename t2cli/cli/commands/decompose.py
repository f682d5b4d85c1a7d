"""``t2 decompose``: SVD of a model's target matrices into the registry."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from t2cli.cli.console import err, human_bytes, out, print_json, progress_bar
from t2cli.cli.options import DeviceOpt, JsonOpt, ModelArg, RevisionOpt, deprecated_alias

TargetsOpt = Annotated[
    str,
    typer.Option(
        "--targets",
        help="Which matrices: attn (q,k,v,o), mlp (gate,up,down), all, or a regex over names "
        "like model.layers.3.mlp.down_proj. In a vision-language model attn, mlp and all are its language "
        "model's; vision (the vision tower), projector or a regex reach the image side.",
    ),
]
SvdDtypeOpt = Annotated[str, typer.Option("--svd-dtype", help="Compute precision of the SVD: float32 or float64.")]
OldDtypeOpt = Annotated[
    str | None, typer.Option("--dtype", hidden=True, help="Deprecated spelling of --svd-dtype.", show_default=False)
]
MethodOpt = Annotated[str, typer.Option("--method", help="SVD method (auto picks the fastest exact one).")]


def decompose(
    model: ModelArg = None,
    targets: TargetsOpt = "all",
    svd_dtype: SvdDtypeOpt = "float32",
    device: DeviceOpt = "auto",
    method: MethodOpt = "auto",
    revision: RevisionOpt = None,
    as_json: JsonOpt = False,
    old_dtype: OldDtypeOpt = None,
) -> None:
    """Decompose MODEL's target matrices (U, S, Vh per matrix) into the registry, once.

    Re-running is a no-op; an interrupted run resumes where it stopped.

    Examples:

      t2 decompose                        # the embedded SmolLM2-135M, attention + MLP

      t2 decompose llama3-8b --targets mlp --device cuda --svd-dtype float64

      t2 decompose ./model.gguf --targets 'layers\\.(2[0-9])\\.mlp'

      t2 decompose smolvlm-256m --targets vision   # a VLM's vision tower
    """
    from t2cli.decompose.engine import MAX_REL_ERROR, decompose_model  # noqa: PLC0415 - CLI start-up: pulls torch (~2 s)
    from t2cli.home import open_registry  # noqa: PLC0415 - CLI start-up: not loaded by `t2 --help` (~2 ms)

    if old_dtype is not None:
        deprecated_alias("--dtype", "--svd-dtype")
        svd_dtype = old_dtype
    with open_registry() as registry, _progress_bar(disable=as_json) as (progress, on_progress):
        summary = decompose_model(
            registry,
            model,
            targets=targets,
            dtype=svd_dtype,
            device=device,
            method=method,
            revision=revision,
            on_progress=on_progress,
        )
        progress.stop()
    if as_json:
        print_json(asdict(summary))
        return
    if summary.already_complete:
        out.print(f"Already decomposed: nothing to do (decomposition #{summary.decomposition_id}).")
    out.print(
        f"[bold]{summary.model_name}[/] ({summary.model_source}) targets={summary.targets_spec} "
        f"dtype={summary.dtype}: {summary.num_matrices} matrices "
        f"({summary.computed} computed, {summary.reused} reused), {human_bytes(summary.size_bytes)} stored, "
        f"{summary.seconds:.1f} s"
    )
    verdict = "ok" if summary.max_rel_error < MAX_REL_ERROR else f"[red]above {MAX_REL_ERROR:g}[/]"
    out.print(f"max relative reconstruction error: {summary.max_rel_error:.2e} ({verdict})")
    if summary.max_rel_error >= MAX_REL_ERROR:
        err.print("warning: some matrices reconstruct poorly; try --svd-dtype float64")


class _progress_bar:
    """A Rich progress bar on stderr fed by the engine's progress callback."""

    def __init__(self, disable: bool) -> None:
        self.progress = progress_bar(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("matrices · {task.fields[stored]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            quiet=disable,
            transient=True,
        )
        self.task = self.progress.add_task("loading model", total=None, stored="0 B")

    def __enter__(self):
        self.progress.start()
        return self.progress, self._update

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _update(self, event) -> None:
        self.progress.update(
            self.task,
            description="decomposing" if event.done < event.total else "done",
            total=event.total,
            completed=event.done,
            stored=human_bytes(event.bytes_stored),
        )


def register(app: typer.Typer) -> None:
    """Add ``decompose`` to the root app."""
    app.command("decompose")(decompose)
