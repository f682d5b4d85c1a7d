"""Peak memory of ``t2 decompose`` (streamed from safetensors) against loading the model first.

    python bench/decompose_memory.py                  # Llamas of 4, 8, 16 layers, hidden 2048 (0.5-1.9 GB bf16), ~15 min
    python bench/decompose_memory.py --layers 2,4 --hidden 512 --intermediate 1408   # quick run, under a minute

The claim under test (docs/decompose.md, "Streaming"): ``t2 decompose`` reads an HF folder
tensor by tensor, so its memory is a chunk of matrices and their factors, never the model.
An 8B model then decomposes on a machine that could not hold it twice.

The model is a random-weight Llama built from a ``LlamaConfig`` (no Hub) and saved as
bfloat16 safetensors in a temporary folder. Each variant runs in a fresh subprocess:

* **baseline, load then SVD**: ``AutoModelForCausalLM.from_pretrained(folder, dtype=bfloat16)``,
  then ``torch.linalg.svd(W.float(), full_matrices=False)`` of each target matrix, its
  factors dropped at once. The authors' code does this and also keeps every factor, so this
  baseline is a lower bound of its memory;
* **t2 decompose**: ``t2cli.decompose.engine.decompose_model(registry, folder)``, what
  ``t2 decompose FOLDER`` runs (factors written to a blob store in a temporary home).

Printed per model and variant: seconds, and the peak resident memory above the process after
its imports (VmHWM, reset after the imports, minus RSS then; it includes file pages mapped
while they are read). Beside these: the model's size on disk, and bench/memory_plan.py's
arithmetic for t2 on the CPU (the largest matrix's peak, one matrix per torch thread). Streaming
shows as a t2 column that stays flat while the models, and the baseline, grow.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))
from decompose import _proc_status_kib, _reset_peak_rss  # noqa: E402  (the VmHWM helpers of bench/decompose.py)
from memory_plan import TARGET_SETS, Shapes, decompose_matrix_bytes  # noqa: E402

MIB = 2**20
VARIANTS = ("baseline", "t2")


def build_model(folder: Path, shapes: Shapes, seed: int) -> int:
    """Save a random-weight bfloat16 Llama of ``shapes`` into ``folder``; returns its safetensors bytes."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=shapes.vocab,
        hidden_size=shapes.hidden,
        intermediate_size=shapes.intermediate,
        num_hidden_layers=shapes.layers,
        num_attention_heads=shapes.heads,
        num_key_value_heads=shapes.kv_heads,
        architectures=["LlamaForCausalLM"],
        dtype="bfloat16",
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    return sum(path.stat().st_size for path in folder.glob("*.safetensors"))


def _baseline(folder: Path, targets: str) -> int:
    import torch
    from transformers import AutoModelForCausalLM

    from t2cli.models.targets import select_targets

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16)
    chosen = select_targets(model.config.model_type, model.config.num_hidden_layers, targets)
    for matrix in chosen:
        weight = model.get_parameter(matrix.weight_name)
        U, S, Vh = torch.linalg.svd(weight.float(), full_matrices=False)
        del U, S, Vh
    return len(chosen)


def _t2(folder: Path, targets: str) -> int:
    from t2cli.decompose.engine import decompose_model
    from t2cli.home import open_registry

    with open_registry() as registry:
        return decompose_model(registry, str(folder), targets=targets).computed


def run_worker(name: str, folder: Path, targets: str) -> dict:
    """One variant in this fresh process: its seconds and peak memory above the imports."""
    import torch  # noqa: F401  (imported before the reset, like everything else either variant needs)
    import transformers  # noqa: F401

    import t2cli.decompose.engine
    import t2cli.models.targets  # noqa: F401

    rss_before = _proc_status_kib("VmRSS")
    if not _reset_peak_rss() or rss_before is None:
        raise SystemExit("this bench needs Linux's /proc/self/clear_refs to reset the peak RSS")
    started = time.perf_counter()
    matrices = (_baseline if name == "baseline" else _t2)(folder, targets)
    seconds = time.perf_counter() - started
    peak = _proc_status_kib("VmHWM")
    return {
        "seconds": seconds,
        "matrices": matrices,
        "imports_mib": rss_before / 1024,
        "extra_mib": (peak - rss_before) / 1024,
    }


def run_in_subprocess(name: str, folder: Path, targets: str, home: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", name, "--folder", str(folder), "--targets", targets]
    env = {**os.environ, "T2_HOME": str(home)}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def predicted_peak_bytes(shapes: Shapes, targets: str, threads: int) -> int:
    """bench/memory_plan.py's CPU arithmetic: the largest target matrix's peak, one per torch thread."""
    roles = TARGET_SETS[targets]
    return threads * max(decompose_matrix_bytes(m, n) for role, (m, n) in shapes.matrices().items() if role in roles)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", default="4,8,16", help="comma-separated layer counts, one model each")
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=16)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--targets", default="all", choices=("all", "attn", "mlp"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(run_worker(args.worker, args.folder, args.targets)))
        return

    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 130))  # the table has nine columns
    threads = torch.get_num_threads()
    rows = []
    for layers in (int(n) for n in args.layers.split(",")):
        shapes = Shapes(
            f"Llama, {layers} layers",
            layers=layers,
            hidden=args.hidden,
            intermediate=args.intermediate,
            heads=args.heads,
            kv_heads=args.kv_heads,
            vocab=args.vocab,
        )
        with tempfile.TemporaryDirectory(prefix="t2-bench-decompose-memory-") as scratch:
            folder, home = Path(scratch) / "model", Path(scratch) / "home"
            console.log(f"building {shapes.name}: {shapes.total_params() / 1e9:.2f}B parameters, random bf16 weights")
            model_bytes = build_model(folder, shapes, args.seed)
            results = {}
            for name in VARIANTS:
                console.log(f"{shapes.name}: {name} in a fresh process")
                results[name] = run_in_subprocess(name, folder, args.targets, home)
                console.log(f"{name}: {results[name]}")
        rows.append((layers, model_bytes, results, predicted_peak_bytes(shapes, args.targets, threads)))

    table = Table(
        title=f"MiB above the imports (model: on disk): hidden {args.hidden}, intermediate {args.intermediate}, "
        f"{args.targets} targets, {threads} torch threads"
    )
    # model: bf16 safetensors on disk; baseline: load, then SVD; plan: memory_plan.py's CPU arithmetic for t2
    for column in (
        "layers",
        "matrices",
        "model",
        "baseline",
        "t2",
        "t2/baseline",
        "t2/model",
        "t2 plan",
        "s baseline/t2",
    ):
        table.add_column(column, justify="right")
    for layers, model_bytes, results, predicted in rows:
        base, t2 = results["baseline"], results["t2"]
        table.add_row(
            str(layers),
            str(t2["matrices"]),
            f"{model_bytes / MIB:,.0f}",
            f"{base['extra_mib']:,.0f}",
            f"{t2['extra_mib']:,.0f}",
            f"{t2['extra_mib'] / base['extra_mib']:.2f}x",
            f"{t2['extra_mib'] * MIB / model_bytes:.2f}x",
            f"{predicted / MIB:,.0f}",
            f"{base['seconds']:.0f} / {t2['seconds']:.0f}",
        )
    console.print(table)


if __name__ == "__main__":
    main()
