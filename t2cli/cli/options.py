"""Arguments and options shared by several commands, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

ModelArg = Annotated[
    str | None,
    typer.Argument(
        help="An alias (see `t2 models list`), a local Hugging Face folder, a .gguf file or a Hub id. "
        "Default: the embedded SmolLM2-135M-Instruct.",
        show_default=False,
    ),
]
RevisionOpt = Annotated[str | None, typer.Option("--revision", help="Hub revision (branch, tag or commit).")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Base weights' dtype: auto (bfloat16 on CUDA, as stored on CPU), float32, bfloat16 or float16. "
        "SVD factors, deltas and z stay float32.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
ExpertArg = Annotated[str, typer.Argument(help="Expert name (see `t2 experts list`).", show_default=False)]
TaskOpt = Annotated[
    str,
    typer.Option(
        "--task",
        "-t",
        help="A task name (gsm8k|math, math500, arithmetic, addition, arc-easy|reasoning, arc-challenge, "
        "mbpp|code, humaneval), dispatch (built from the registered experts) or a .jsonl file. See `t2 tasks`.",
        show_default=False,
    ),
]
