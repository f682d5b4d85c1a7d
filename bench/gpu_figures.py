"""GPU figures for an 8B-shaped random-weight Llama: decompose, expert swap, one RL step at batch 64.

    python bench/gpu_figures.py --json $OUT/gpu.json          # on the GPU machine (Llama-3-8B shapes, MLP targets)
    python bench/gpu_figures.py --preset tiny --device cpu    # CPU smoke run, well under a minute
    python bench/gpu_figures.py --estimate-only               # FLOP-based H200 estimate, builds nothing

The GPU machine has no Hub access and no tokenizer, so the model is built from a
``LlamaConfig`` with Llama-3-8B's shapes and random weights, directly on the device in
bf16. Every timing calls t2's own code:

* decompose: ``t2cli.decompose.engine.plan_chunks`` + ``t2cli.decompose.svd.svd_batch`` over the model's
  target matrices, as ``t2 decompose`` runs them (results dropped after each chunk, as
  ``t2 decompose`` hands them to the blob store; storing is not timed), against the
  authors' plain ``torch.linalg.svd`` loop on a subset of layers;
* swap: ``t2cli.svf.model.SVFModel.apply`` / ``restore`` with the factors resident on the device;
* RL step: the numbered sections of ``t2cli.train.loop._train``: ``differentiable_weights`` +
  ``apply_weights``, ``t2cli.runtime.generation.generate`` (keyed sampling, 16 prompts x 4
  samples), ``svf_policy_gradient`` (micro-batched loss forward/backward, then backward
  into z), clip and AdamW step.

Swap and step run on stand-in factors (random U, S, Vh of exactly t2's shapes and dtype):
the cost of composing and backpropagating depends on shapes only, and decomposing all
matrices of the 8B model would not fit the machine's time. Each phase runs in its own
try/except; progress lines are flushed and the JSON is rewritten after every phase, so a
run cut at its time limit keeps what it measured. A partial measurement is labelled as
such; extrapolations are separate rows that say so.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the GPU machine's python3 has no t2 installed: run from the checkout
sys.path.insert(1, str(REPO / "bench"))  # for memory_plan
import memory_plan  # noqa: E402  (shapes and memory arithmetic are described once, in the memory plan)
from memory_plan import Shapes  # noqa: E402

GIB = 2**30
PHASES = ("decompose", "swap", "step")
T0 = time.perf_counter()

# Ceilings of one H200 for the FLOP estimate. bf16 matmul rate and copy bandwidth are what
# /work/.library/device/KINDS.md records as measured there (788 TFLOP/s, 4.3 TB/s); the rest
# are assumptions, stated where they are used.
H200_BF16_FLOPS = 788e12
H200_BYTES_PER_S = 4.3e12
BF16_EFFICIENCY = 0.55  # HF eager Llama layers (GEMMs of 4k-14k, norms, rope): about half the matmul peak
FP32_FLOPS = 50e12  # plain fp32 (torch leaves TF32 off for matmuls): ~75% of the 67 TFLOP/s datasheet peak
SVD_FLOPS = 1e12  # cuSOLVER SVD of a 14336x4096 matrix: an assumption, uncertain by 3x either way (not measured)
DECODE_LAYER_OVERHEAD_S = 0.8e-3  # HF eager decoding: kernel launches + Python per decoder layer per token
START_S = 30.0  # python + torch + transformers imports, CUDA context, building 8B weights on the GPU


# --------------------------------------------------------------------------- shapes and presets


@dataclass(frozen=True, kw_only=True)
class Preset(Shapes):
    """A model shape (bench/memory_plan.py's ``Shapes``) and the run sizes that go with it."""

    prompt_len: int  # rollout prompt tokens (random ids: no tokenizer offline)
    new_tokens: int  # generated tokens per sequence, fixed (the model has no end token)
    decompose_layers: int  # layers t2's engine decomposes (the rest is extrapolated)
    baseline_layers: int  # layers the plain torch.linalg.svd loop decomposes


PRESETS = {
    "llama3-8b": Preset(
        name="Llama-3-8B",
        layers=32,
        hidden=4096,
        intermediate=14336,
        heads=32,
        kv_heads=8,
        vocab=128256,
        prompt_len=128,
        new_tokens=128,
        decompose_layers=2,
        baseline_layers=1,
    ),
    # Hidden 64 as asked; a small vocabulary, else the logits of 64 sequences dominate a CPU run.
    "tiny": Preset(
        name="tiny",
        layers=2,
        hidden=64,
        intermediate=224,
        heads=4,
        kv_heads=2,
        vocab=512,
        prompt_len=16,
        new_tokens=16,
        decompose_layers=2,
        baseline_layers=1,
    ),
}


def llama_config(p: Preset, layers: int):
    """A transformers LlamaConfig with Llama-3's layout (rope_theta 500000, untied head, no end token)."""
    from transformers import LlamaConfig

    # eos/bos None: generation never stops early, so every rollout is exactly new_tokens long.
    return LlamaConfig(
        vocab_size=p.vocab,
        hidden_size=p.hidden,
        intermediate_size=p.intermediate,
        num_hidden_layers=layers,
        num_attention_heads=p.heads,
        num_key_value_heads=p.kv_heads,
        rope_theta=500000.0,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=None,
        eos_token_id=None,
    )


def role_shapes(p: Preset) -> dict[str, tuple[int, int]]:
    """(out, in) of each t2 role (t2cli.models.targets role names) in one decoder layer."""
    d = p.hidden // p.heads
    h, i = p.hidden, p.intermediate
    return {
        "attn.q": (p.heads * d, h),
        "attn.k": (p.kv_heads * d, h),
        "attn.v": (p.kv_heads * d, h),
        "attn.o": (h, p.heads * d),
        "mlp.gate": (i, h),
        "mlp.up": (i, h),
        "mlp.down": (h, i),
    }


def target_roles(p: Preset, targets: str) -> dict[str, tuple[int, int]]:
    """The roles of ``--targets`` (attn, mlp or all) with their shapes."""
    return {role: mn for role, mn in role_shapes(p).items() if targets == "all" or role.startswith(targets + ".")}


def svd_flops(m: int, n: int) -> float:
    """Thin SVD with U and V (Golub & Van Loan's R-SVD count): 6 M N^2 + 20 N^3 for M >= N."""
    big, small = max(m, n), min(m, n)
    return 6.0 * big * small**2 + 20.0 * small**3


def model_params(p: Preset, layers: int) -> tuple[int, int]:
    """(all parameters, parameters a forward pass multiplies by: decoder matrices + LM head)."""
    per_layer = sum(m * n for m, n in role_shapes(p).values())
    matmul = layers * per_layer + p.vocab * p.hidden
    return matmul + p.vocab * p.hidden + layers * 2 * p.hidden + p.hidden, matmul


# --------------------------------------------------------------------------- the FLOP estimate


def estimate(p: Preset, layers: int, targets: str, args: argparse.Namespace) -> dict[str, Any]:
    """Seconds each phase should take on one H200, from FLOP and byte counts (see the constants above)."""
    roles = target_roles(p, targets)
    total_params, matmul_params = model_params(p, layers)
    target_params = layers * sum(m * n for m, n in roles.values())
    bf16 = H200_BF16_FLOPS * BF16_EFFICIENCY
    sequences = args.prompts * args.samples
    seq_len = args.prompt_len + args.new_tokens

    compose_flops = layers * sum(2.0 * m * n * min(m, n) for m, n in roles.values())  # (U * S(z-1)) @ Vh, fp32
    svd_one = {role: svd_flops(m, n) for role, (m, n) in roles.items()}
    svd_all = layers * sum(svd_one.values())
    prefill = 2.0 * matmul_params * sequences * args.prompt_len
    decode_step = total_params * 2 / H200_BYTES_PER_S + layers * DECODE_LAYER_OVERHEAD_S  # weights read once a token
    generate_s = prefill / bf16 + args.new_tokens * decode_step
    # Forward 2P per token; backward 2P into activations + 2P_targets into dL/dW' (the leaves).
    loss_flops = sequences * seq_len * (4.0 * matmul_params + 2.0 * target_params)
    z_backward_flops = compose_flops  # dL/d(U*scale) = G @ Vh^T: the same m*n*r product per matrix

    est = {
        "assumptions": {
            "bf16_matmul_flops": H200_BF16_FLOPS,
            "bf16_efficiency": BF16_EFFICIENCY,
            "fp32_flops": FP32_FLOPS,
            "svd_flops_per_s": SVD_FLOPS,
            "hbm_bytes_per_s": H200_BYTES_PER_S,
            "decode_overhead_s_per_layer_token": DECODE_LAYER_OVERHEAD_S,
            "start_s": START_S,
        },
        "svd_tflop_per_matrix": {role: f / 1e12 for role, f in svd_one.items()},
        "decompose_all_s": svd_all / SVD_FLOPS,
        # The phase as run: baseline layers + t2's layers (0 = all), which the budget caps.
        "decompose_phase_s": min(
            ((args.decompose_layers or layers) + args.baseline_layers) * sum(svd_one.values()) / SVD_FLOPS,
            args.decompose_budget_s,
        ),
        "compose_tflop": compose_flops / 1e12,
        "compose_s": compose_flops / FP32_FLOPS,
        "generate_s": generate_s,
        "generate_tokens_per_s": sequences * args.new_tokens / generate_s,
        "loss_tflop": (loss_flops + z_backward_flops) / 1e12,
        "loss_s": loss_flops / bf16 + z_backward_flops / FP32_FLOPS,
        "z_backward_s": z_backward_flops / FP32_FLOPS,
        "optimizer_s": 0.0,
    }
    est["step_s"] = est["compose_s"] + est["generate_s"] + est["loss_s"]
    gen64_s = 64 * (total_params * 2 / H200_BYTES_PER_S + layers * DECODE_LAYER_OVERHEAD_S)
    est["swap_phase_s"] = args.swap_repeat * (est["compose_s"] + 1.0 * gen64_s) + gen64_s
    est["run_s"] = (
        START_S + est["decompose_phase_s"] + est["swap_phase_s"] + args.steps * est["step_s"] + 2 * est["z_backward_s"]
    )
    return est


def print_estimate(est: dict[str, Any], label: str) -> None:
    """The estimate as log lines (assumptions included)."""
    a = est["assumptions"]
    log(
        f"H200 estimate for {label} (bf16 {a['bf16_matmul_flops'] / 1e12:.0f} TFLOP/s x {a['bf16_efficiency']}, "
        f"fp32 {a['fp32_flops'] / 1e12:.0f} TFLOP/s, SVD {a['svd_flops_per_s'] / 1e12:.1f} TFLOP/s (a guess), "
        f"HBM {a['hbm_bytes_per_s'] / 1e12:.1f} TB/s + {a['decode_overhead_s_per_layer_token'] * 1e3:.1f} ms "
        "per layer and token of decoding):"
    )
    per = ", ".join(f"{role} {tf:.2f}" for role, tf in est["svd_tflop_per_matrix"].items())
    log(
        f"  SVD TFLOP per matrix: {per}; all target matrices {est['decompose_all_s']:.0f} s, "
        f"this run's decompose phase {est['decompose_phase_s']:.0f} s"
    )
    log(
        f"  RL step: compose {est['compose_tflop']:.1f} TFLOP fp32 = {est['compose_s']:.2f} s; generate "
        f"{est['generate_s']:.2f} s ({est['generate_tokens_per_s']:,.0f} tok/s); loss {est['loss_tflop']:.0f} TFLOP "
        f"= {est['loss_s']:.2f} s (of which backward into z {est['z_backward_s']:.2f} s); step {est['step_s']:.1f} s"
    )
    log(
        f"  whole run with these options: ~{est['run_s']:.0f} s ({est['run_s'] / 60:.1f} min) incl. "
        f"~{a['start_s']:.0f} s start; swap phase {est['swap_phase_s']:.0f} s"
    )


# --------------------------------------------------------------------------- measuring helpers


def log(message: str) -> None:
    """One progress line, flushed at once (the log must be readable when the run is cut)."""
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


def sync(device: torch.device) -> None:
    """Wait for the device's queued kernels (timings would otherwise measure launches only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """(seconds, result) of ``fn``, synchronised before and after."""
    sync(device)
    start = time.perf_counter()
    result = fn()
    sync(device)
    return time.perf_counter() - start, result


def median_s(fn: Callable[[], Any], device: torch.device, repeat: int) -> float:
    """Median seconds of ``repeat`` calls of ``fn``."""
    return statistics.median(timed(fn, device)[0] for _ in range(repeat))


def allocated(device: torch.device) -> int | None:
    """Bytes the caching allocator has handed out now (None off CUDA)."""
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak(device: torch.device) -> int | None:
    """torch.cuda.max_memory_allocated since the last reset (None off CUDA)."""
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


def gib(nbytes: float | None) -> float | None:
    return None if nbytes is None else nbytes / GIB


class PhaseClock:
    """Seconds and peak memory of named sections of one step."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.seconds: dict[str, float] = {}
        self.peak_gib: dict[str, float | None] = {}

    @contextmanager
    def measure(self, name: str) -> Iterator[None]:
        sync(self.device)
        reset_peak(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[name] = time.perf_counter() - start
        self.peak_gib[name] = gib(peak(self.device))


def environment(device: torch.device) -> dict[str, Any]:
    """What the figures were measured on."""
    import transformers

    env: dict[str, Any] = {
        "device": str(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
    }
    try:  # cuSOLVER or MAGMA behind torch.linalg.svd on CUDA
        env["linalg_library"] = str(torch.backends.cuda.preferred_linalg_library())
    except (RuntimeError, AttributeError):
        env["linalg_library"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu=props.name,
            gpu_memory_gib=props.total_memory / GIB,
            capability=f"{props.major}.{props.minor}",
            multiprocessors=props.multi_processor_count,
        )
    else:
        env["gpu"] = None
    return env


# --------------------------------------------------------------------------- model and factors


def build_model(p: Preset, layers: int, device: torch.device):
    """A random-weight Llama created on ``device`` in bf16 (no float32 copy on the CPU first)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM._from_config(llama_config(p, layers), dtype=torch.bfloat16)
    return model.eval()


def model_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.parameters())


def chosen_targets(layers: int, targets: str) -> list:
    """t2's own target resolution (t2cli.models.targets) for a Llama of ``layers`` layers."""
    from t2cli.models.targets import select_targets

    return select_targets("llama", layers, targets)


def stand_in_factors(model: torch.nn.Module, names: list[str], device: torch.device) -> dict:
    """Random float32 U (m x r), S (r), Vh (r x n) for each target: t2's shapes, dtype and device.

    S runs between the Marchenko-Pastur edges of a random m x n matrix with the model's init
    std (0.02), and U, Vh have unit-norm-ish columns/rows, so z near 1 moves W by ~1%.
    """
    from t2cli.svf.model import Factors

    modules = dict(model.named_modules())
    factors = {}
    for name in names:
        m, n = modules[name].weight.shape
        r = min(m, n)
        U = torch.randn(m, r, device=device) / math.sqrt(m)
        Vh = torch.randn(r, n, device=device) / math.sqrt(n)
        S = torch.linspace(
            0.02 * (math.sqrt(m) + math.sqrt(n)), 0.02 * abs(math.sqrt(m) - math.sqrt(n)) + 1e-3, r, device=device
        )
        factors[name] = Factors(U, S, Vh)
    return factors


def factor_bytes(factors: dict) -> int:
    return sum(t.numel() * t.element_size() for f in factors.values() for t in (f.U, f.S, f.Vh))


class IdTokenizer:
    """Stands in for a tokenizer, which the offline GPU machine does not have.

    A "text" is token ids written as decimal numbers separated by spaces, so
    ``t2cli.runtime.generation.generate`` runs its own code path (left padding, KeyedSampler,
    end-token cut) on random prompt ids.
    """

    pad_token = "<pad>"
    pad_token_id = 0
    eos_token = None
    eos_token_id = None
    padding_side = "left"
    chat_template = None

    def __call__(
        self, texts: list[str], return_tensors: str = "pt", padding: bool = True, add_special_tokens: bool = False
    ):
        from transformers import BatchEncoding

        rows = [[int(t) for t in text.split()] for text in texts]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, row in enumerate(rows):
            ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
        return BatchEncoding({"input_ids": ids, "attention_mask": mask})

    def batch_decode(self, sequences, skip_special_tokens: bool = True) -> list[str]:
        return [" ".join(str(int(t)) for t in seq) for seq in sequences]


# --------------------------------------------------------------------------- memory plan


def memory_plan_rows(p: Preset, layers: int, targets: str) -> dict[str, float]:
    """bench/memory_plan.py's rows (GiB) for these shapes, cut to ``layers``, and targets."""
    from dataclasses import replace

    _, rows = memory_plan.plan(replace(p, layers=layers), targets)
    return {label.strip(): value for label, value, _ in rows}


def plan_row(rows: dict[str, float] | None, prefix: str) -> float | None:
    """The memory-plan row whose label starts with ``prefix`` (labels are matched loosely on purpose)."""
    if rows is None:
        return None
    return next((v for label, v in rows.items() if label.startswith(prefix)), None)


# --------------------------------------------------------------------------- phase 1: decompose


def decompose_phase(model, p: Preset, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """The plain torch.linalg.svd loop on a few layers, then t2's engine on as many layers as the budget allows."""
    from t2cli.decompose.engine import DEFAULT_CHUNK_MATRICES, plan_chunks
    from t2cli.decompose.svd import relative_reconstruction_error, svd_batch
    from t2cli.models.weights import ModuleWeights

    source = ModuleWeights(model)
    everything = chosen_targets(args.layers, args.targets)
    # cuSOLVER handle and workspace, first-call dispatch of both paths: not part of any row.
    warm = torch.randn(256, 128, device=device)
    svd_batch([warm])
    torch.linalg.svd(warm, full_matrices=False)
    sync(device)

    # The authors' way first: its per-matrix rate sizes t2's subset to the time budget.
    base_list = [m for m in everything if m.layer < min(args.baseline_layers, args.layers)]
    base_s, base_flops, base_err, started = 0.0, 0.0, 0.0, time.perf_counter()
    for done, matrix in enumerate(base_list, 1):
        w = source.get(matrix.weight_name)
        seconds, (U, S, Vh) = timed(lambda: torch.linalg.svd(w.float(), full_matrices=False), device)
        base_s += seconds
        base_flops += svd_flops(*w.shape)
        base_err = max(base_err, relative_reconstruction_error(w, U, S, Vh))  # untimed
        del U, S, Vh
        log(f"decompose baseline: {matrix.name} {tuple(w.shape)} {seconds:.2f} s")
        if time.perf_counter() - started > args.decompose_budget_s / 3 and done < len(base_list):
            log(f"decompose baseline: budget reached after {done} of {len(base_list)} matrices")
            base_list = base_list[:done]
            break

    # t2: as many layers as --decompose-layers asks, fewer if the baseline's rate says they would not fit.
    want = args.layers if args.decompose_layers == 0 else min(args.decompose_layers, args.layers)
    per_layer_s = (
        (base_s / base_flops) * sum(svd_flops(m, n) for m, n in target_roles(p, args.targets).values())
        if base_flops
        else 0.0
    )
    remaining = args.decompose_budget_s - (time.perf_counter() - started)
    fits = want if per_layer_s <= 0 else max(1, min(want, int(remaining / per_layer_s)))
    if fits < want:
        log(
            f"decompose: {want} layers would take ~{want * per_layer_s:.0f} s at the baseline's rate; "
            f"decomposing {fits} (--decompose-budget-s {args.decompose_budget_s:g})"
        )
    pending = [m for m in everything if m.layer < fits]
    before = allocated(device)
    reset_peak(device)
    chunks, t2_s, t2_flops, t2_err, methods, largest_extra = [], 0.0, 0.0, 0.0, {}, 0
    for chunk in plan_chunks(pending, source, DEFAULT_CHUNK_MATRICES):
        # As t2cli.decompose.engine._decompose_group does on a GPU (a whole chunk at once), without storing:
        # the results are dropped with the chunk.
        weights = [source.get(m.weight_name).to(device) for m in chunk]
        seconds, results = timed(
            partial(svd_batch, weights, compute_dtype=torch.float32, method=args.svd_method), device
        )
        shape = tuple(weights[0].shape)
        t2_s += seconds
        t2_flops += len(chunk) * svd_flops(*shape)
        t2_err = max([t2_err] + [r.rel_error for r in results])
        for r in results:
            methods[r.method] = methods.get(r.method, 0) + 1
        largest_extra = max(largest_extra, memory_plan.decompose_chunk_bytes(*shape, len(chunk), stored=False))
        chunks.append({"shape": list(shape), "matrices": len(chunk), "seconds": seconds})
        log(
            f"decompose t2: chunk of {len(chunk)} x {shape} {seconds:.2f} s "
            f"({len(chunk) / seconds:.2f} matrices/s), max rel err {max(r.rel_error for r in results):.2e}"
        )
        del weights, results
    peak_bytes = peak(device)
    total_flops = sum(svd_flops(*source.shape(m.weight_name)) for m in everything)
    extrapolated = t2_s * total_flops / t2_flops if t2_flops else None
    rate_ratio = (t2_s / t2_flops) / (base_s / base_flops) if t2_flops and base_flops else None
    return {
        "t2": {
            "layers": fits,
            "matrices": len(pending),
            "seconds": t2_s,
            "matrices_per_s": len(pending) / t2_s,
            "max_rel_error": t2_err,
            "methods": methods,
            "chunks": chunks,
        },
        "all_targets_extrapolated": {
            "matrices": len(everything),
            "seconds": extrapolated,
            "extrapolated": len(pending) < len(everything),
            "how": "t2 seconds x (SVD FLOP of all target matrices / SVD FLOP of those measured)",
        },
        "baseline": {
            "layers": min(args.baseline_layers, args.layers),
            "matrices": len(base_list),
            "seconds": base_s,
            "seconds_per_matrix": base_s / max(len(base_list), 1),
            "max_rel_error": base_err,
        },
        "t2_vs_baseline": rate_ratio,
        "t2_vs_baseline_how": "seconds per SVD FLOP, t2 / baseline (= per matrix when the shape mix is the same)",
        "memory": {
            "model_gib": gib(model_bytes(model)),
            "allocated_before_gib": gib(before),
            "peak_gib": gib(peak_bytes),
            "peak_extra_gib": gib(None if peak_bytes is None else peak_bytes - before),
            "plan_extra_gib_this_run": gib(largest_extra),
            "plan_extra_how": "memory_plan.py's chunk terms for this run's largest chunk, weights excluded "
            "(they are the model's, resident before)",
        },
    }


# --------------------------------------------------------------------------- phase 2: swap


def swap_phase(svf, model, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """SVFModel.apply of a random expert (all targets composed), of a cached one, restore; 64-token greedy decode."""
    z = {name: 1.0 + 0.01 * torch.randn_like(f.S) for name, f in svf.factors.items()}
    key = "random-expert"

    def first_apply() -> None:
        svf.forget(key)
        svf.apply(z, key=key)

    def cached_apply() -> None:
        svf.apply(z, key=key)  # apply restores first, then rebinds the cached tensors

    def restore_after_apply() -> float:
        svf.apply(z, key=key)
        return timed(svf.restore, device)[0]

    reset_peak(device)
    first = [timed(first_apply, device)[0] for _ in range(args.swap_repeat)]
    log(f"swap: first apply (compose {len(z)} matrices) {', '.join(f'{s:.3f}' for s in first)} s")
    cached = median_s(cached_apply, device, 20)
    restore = statistics.median(restore_after_apply() for _ in range(20))
    log(f"swap: cached apply {cached * 1e3:.3f} ms, restore {restore * 1e3:.3f} ms")
    peak_bytes = peak(device)
    svf.restore()
    svf.forget(key)  # the cached W' is a full copy of the targets: free it before the RL step

    ids = torch.randint(1, model.config.vocab_size, (1, args.prompt_len), device=device)

    def generate64() -> None:
        with torch.no_grad():
            model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=64,
                min_new_tokens=64,
                do_sample=False,
                pad_token_id=0,
            )

    generate64()  # warm-up (kernels, allocator)
    gen = median_s(generate64, device, args.swap_repeat)
    first_median = statistics.median(first)
    log(f"swap: greedy 64 tokens, batch 1: {gen:.3f} s")
    return {
        "matrices": len(z),
        "first_apply_s": first_median,
        "first_apply_all_s": first,
        "cached_apply_s": cached,
        "restore_s": restore,
        "generate64_s": gen,
        "first_apply_vs_generate64": first_median / gen,
        "cached_apply_vs_generate64": cached / gen,
        "peak_gib": gib(peak_bytes),
    }


# --------------------------------------------------------------------------- phase 3: RL step


def rl_step_phase(
    svf, model, p: Preset, args: argparse.Namespace, device: torch.device, plan: dict[str, float] | None
) -> dict[str, Any]:
    """``--steps`` training steps as t2cli.train.loop._train runs them (sections 2-6), each phase timed."""
    from t2cli.runtime.generation import Generations, generate, sample_key
    from t2cli.train.loop import TrainConfig, group_advantages, svf_policy_gradient

    config = TrainConfig(
        task="bench",
        name="bench",
        prompts_per_step=args.prompts,
        samples_per_prompt=args.samples,
        temperature=1.0,
        max_new_tokens=args.new_tokens,
        micro_batch=args.micro_batch,
        gen_batch=args.prompts * args.samples,
        seed=0,
    )
    tokenizer = IdTokenizer()
    adaptable = SimpleNamespace(svf=svf, model=model, tokenizer=tokenizer, device=str(device))
    z = {name: torch.ones_like(f.S, requires_grad=True) for name, f in svf.factors.items()}
    optimizer = torch.optim.AdamW(list(z.values()), lr=config.lr, weight_decay=config.weight_decay)
    rng = random.Random(0)
    total = args.prompts * args.samples
    steps = []
    for step in range(1, args.steps + 1):
        clock = PhaseClock(device)
        prompts = [
            " ".join(str(rng.randrange(1, p.vocab)) for _ in range(args.prompt_len)) for _ in range(args.prompts)
        ]
        keys = [sample_key(0, step, i, j) for i in range(args.prompts) for j in range(args.samples)]
        step_start = time.perf_counter()
        with clock.measure("compose"):  # section 2: W'(z) once per step, bound for the rollouts
            composed = svf.differentiable_weights(z)
            svf.apply_weights(composed)
        try:
            with clock.measure("generate"):
                gens: Generations = generate(
                    model,
                    tokenizer,
                    prompts,
                    max_new_tokens=args.new_tokens,
                    temperature=config.temperature,
                    per_prompt=args.samples,
                    batch_size=config.gen_batch,
                    sample_keys=keys,
                )
        finally:
            svf.restore()
        # Sections 3-4: rewards alternate +1/-1 inside each group, so every advantage is +-1 and no
        # sequence is skipped by policy_gradient (the full 64-sequence cost, the worst case).
        rewards = torch.tensor([1.0 if j % 2 == 0 else -1.0 for _ in range(args.prompts) for j in range(args.samples)])
        advantages = group_advantages(rewards, config)
        optimizer.zero_grad(set_to_none=True)
        with clock.measure("loss"):  # section 5: micro-batched forward/backward into dL/dW', then into z
            loss, _ = svf_policy_gradient(adaptable, composed, gens, advantages, config, total=total)
        del composed
        with clock.measure("optimizer"):  # section 6 (one process: no all-reduce)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(list(z.values()), config.clip_norm))
            optimizer.step()
        sync(device)
        seconds = time.perf_counter() - step_start
        record = {
            "step": step,
            "seconds": seconds,
            "phase_s": clock.seconds,
            "phase_peak_gib": clock.peak_gib,
            "new_tokens": gens.new_tokens,
            "tokens_per_s": gens.new_tokens / clock.seconds["generate"],
            "loss": loss,
            "grad_norm": grad_norm,
        }
        peaks = [v for v in clock.peak_gib.values() if v is not None]
        record["peak_gib"] = max(peaks) if peaks else None
        steps.append(record)
        log(
            f"step {step}/{args.steps}{' (cold)' if step == 1 and args.steps > 1 else ''}: {seconds:.2f} s = "
            + ", ".join(f"{k} {v:.2f}" for k, v in clock.seconds.items())
            + f"; {record['tokens_per_s']:,.0f} tok/s; peak {_fmt_gib(record['peak_gib'])}"
        )

    z_backward = _z_backward_alone(svf, z, device)
    log(f"step: backward W' -> z alone {z_backward:.2f} s")
    measured = steps[-1]
    mb_tokens = min(args.micro_batch, total) * (args.prompt_len + args.new_tokens)
    mb_completion = min(args.micro_batch, total) * args.new_tokens
    resident = plan_row(plan, "resident during a step")
    loss_peak = (
        None
        if resident is None
        else (
            resident
            + plan_row(plan, "+ loss activations") * mb_tokens / 1000
            + plan_row(plan, "+ log-softmax") * mb_completion / 1000
        )
    )
    return {
        "sequences": total,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "micro_batch": args.micro_batch,
        "steps": steps,
        "reported_step": measured["step"],
        "z_backward_alone_s": z_backward,
        "plan": {
            "resident_gib": resident,
            "loss_phase_peak_gib": loss_peak,
            "how": "resident during a step + loss activations and log-softmax of one micro-batch "
            f"({mb_tokens} tokens, {mb_completion} completion tokens)",
        },
    }


def _z_backward_alone(svf, z: dict, device: torch.device) -> float:
    """Seconds of the backward from W'(z) to z alone (inside 'loss' above, where it cannot be split off)."""
    composed = svf.differentiable_weights(z)
    grads = [torch.randn_like(w) for w in composed.values()]
    seconds, _ = timed(lambda: torch.autograd.backward(list(composed.values()), grads), device)
    for v in z.values():
        v.grad = None
    return seconds


# --------------------------------------------------------------------------- report


def _fmt(value: float | None, spec: str = ".2f", unit: str = "") -> str:
    return "n/a" if value is None else f"{format(value, spec)}{unit}"


def _fmt_gib(value: float | None) -> str:
    """GiB with one decimal; MiB below 0.1 GiB (the tiny preset's sizes)."""
    if value is not None and value < 0.1:
        return f"{value * 1024:.2f} MiB"
    return _fmt(value, ".1f", " GiB")


def table(report: dict[str, Any]) -> str:
    """The figures side by side as a markdown table: measured, H200 estimate, memory plan."""
    est, phases, plan = report.get("estimate_h200", {}), report["phases"], report.get("memory_plan_gib")
    rows: list[tuple[str, str, str, str]] = []
    d = phases.get("decompose", {})
    if "t2" in d:
        t2, base, mem, allx = d["t2"], d["baseline"], d["memory"], d["all_targets_extrapolated"]
        rows += [
            (
                f"decompose, t2 engine, {t2['matrices']} matrices ({t2['layers']} layers), measured",
                f"{t2['seconds']:.2f} s, {t2['matrices_per_s']:.2f} matrices/s",
                "",
                "",
            ),
            (
                f"decompose, all {allx['matrices']} target matrices"
                + (", EXTRAPOLATED (not measured)" if allx["extrapolated"] else ", measured"),
                _fmt(allx["seconds"], ".1f", " s"),
                _fmt(est.get("decompose_all_s"), ".0f", " s"),
                "",
            ),
            (
                f"decompose, baseline torch.linalg.svd loop, {base['matrices']} matrices",
                f"{base['seconds_per_matrix']:.2f} s/matrix",
                "",
                "",
            ),
            ("decompose, t2 / baseline (per SVD FLOP)", _fmt(d["t2_vs_baseline"], ".2f", "x"), "", ""),
            (
                "decompose, max rel reconstruction error (t2 / baseline)",
                f"{t2['max_rel_error']:.2e} / {base['max_rel_error']:.2e}",
                "",
                "",
            ),
            (
                f"decompose, peak memory above the model ({_fmt_gib(mem['model_gib'])})",
                _fmt_gib(mem["peak_extra_gib"]),
                "",
                f"{_fmt_gib(mem['plan_extra_gib_this_run'])} for this run's chunks; whole model, weights "
                f"streamed: {_fmt_gib(plan_row(plan, 'decompose peak, GPU'))} per chunk",
            ),
        ]
    f = report.get("factors", {})
    if "allocated_gib" in f:
        base, factors = plan_row(plan, "base weights"), plan_row(plan, "SVD factors")
        rows.append(
            (
                f"resident: model + {'stand-in ' if f['stand_in'] else ''}factors of {f['matrices']} matrices",
                _fmt_gib(f["allocated_gib"]),
                "",
                _fmt_gib(None if base is None or factors is None else base + factors),
            )
        )
    s = phases.get("swap", {})
    if "first_apply_s" in s:
        rows += [
            (
                f"swap, apply a new expert (compose {s['matrices']} W')",
                f"{s['first_apply_s']:.3f} s",
                _fmt(est.get("compose_s"), ".2f", " s"),
                "",
            ),
            ("swap, apply a cached expert", f"{s['cached_apply_s'] * 1e3:.3f} ms", "", ""),
            ("swap, restore", f"{s['restore_s'] * 1e3:.3f} ms", "", ""),
            ("swap, greedy 64 tokens at batch 1 (for scale)", f"{s['generate64_s']:.3f} s", "", ""),
            ("swap, new expert / 64 tokens", f"{s['first_apply_vs_generate64']:.1%}", "", ""),
        ]
    st = phases.get("step", {})
    if st.get("steps"):
        last = st["steps"][-1]
        label = f"step {last['step']} of {len(st['steps'])}"
        ph = last["phase_s"]
        rows += [
            (
                f"RL step ({label}), compose W'(z) + bind",
                f"{ph['compose']:.2f} s",
                _fmt(est.get("compose_s"), ".2f", " s"),
                "",
            ),
            (
                f"RL step, generate {st['sequences']} x {st['new_tokens']} tokens (prompt {st['prompt_len']})",
                f"{ph['generate']:.2f} s, {last['tokens_per_s']:,.0f} tok/s",
                _fmt(est.get("generate_s"), ".2f", " s"),
                "",
            ),
            (
                f"RL step, loss fwd+bwd, micro-batch {st['micro_batch']}, incl. backward into z",
                f"{ph['loss']:.2f} s",
                _fmt(est.get("loss_s"), ".2f", " s"),
                "",
            ),
            (
                "RL step, of which backward W' -> z (measured alone)",
                f"{st['z_backward_alone_s']:.2f} s",
                _fmt(est.get("z_backward_s"), ".2f", " s"),
                "",
            ),
            ("RL step, clip + AdamW", f"{ph['optimizer'] * 1e3:.2f} ms", "", ""),
            ("RL step, total", f"{last['seconds']:.2f} s", _fmt(est.get("step_s"), ".1f", " s"), ""),
            ("RL step, first (cold) step total", f"{st['steps'][0]['seconds']:.2f} s", "", ""),
            (
                "RL step, peak memory (generate / loss)",
                f"{_fmt_gib(last['phase_peak_gib']['generate'])} / {_fmt_gib(last['phase_peak_gib']['loss'])}",
                "",
                f"{_fmt_gib(st['plan']['resident_gib'])} resident / {_fmt_gib(st['plan']['loss_phase_peak_gib'])} loss",
            ),
        ]
    if "total_s" in report:
        rows.append(
            ("whole run (start to table)", f"{report['total_s']:.0f} s", _fmt(est.get("run_s"), ".0f", " s"), "")
        )
    for name in PHASES:
        if "error" in phases.get(name, {}):
            rows.append((f"{name}: FAILED", phases[name]["error"].splitlines()[0][:120], "", ""))
    lines = ["| figure | measured | H200 estimate | memory plan |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {e} |" for a, b, c, e in rows]
    return "\n".join(lines)


def write_json(path: Path | None, report: dict[str, Any]) -> None:
    """Rewrite the JSON (after every phase, so a cut run keeps what it measured)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    os.replace(tmp, path)


def run_phase(
    name: str, report: dict[str, Any], fn: Callable[[], dict[str, Any]], device: torch.device, json_path: Path | None
) -> bool:
    """Run one phase; on failure record the error and carry on with the next phase."""
    log(f"--- {name}")
    try:
        report["phases"][name] = fn()
        ok = True
    except Exception as exc:  # one failing phase must not lose the others' figures
        report["phases"][name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=8)}
        log(f"{name} FAILED: {type(exc).__name__}: {exc}")
        ok = False
        if device.type == "cuda":
            torch.cuda.empty_cache()
    write_json(json_path, report)
    return ok


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="llama3-8b")
    parser.add_argument("--layers", type=int, help="cut the model to N decoder layers (default: the preset's)")
    parser.add_argument("--targets", choices=("mlp", "attn", "all"), default="mlp")
    parser.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--skip", default="", help=f"comma-separated phases to skip: {', '.join(PHASES)}")
    parser.add_argument("--estimate-only", action="store_true", help="print the H200 estimate and exit")
    parser.add_argument(
        "--decompose-layers",
        type=int,
        help="layers t2's engine decomposes; 0 = all, with a --decompose-budget-s to match "
        "(default: the preset's, 2 for llama3-8b)",
    )
    parser.add_argument(
        "--baseline-layers", type=int, help="layers of the plain torch.linalg.svd loop (default: preset)"
    )
    parser.add_argument(
        "--decompose-budget-s",
        type=float,
        default=150.0,
        help="seconds for the decompose phase: the baseline gets a third, t2's layers are cut to fit",
    )
    parser.add_argument("--svd-method", default="auto", help="t2cli.decompose.svd method for the t2 rows")
    parser.add_argument("--swap-repeat", type=int, default=3, help="repeats of the first apply and of the decode")
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (batch = prompts x samples)")
    parser.add_argument("--prompt-len", type=int, help="prompt tokens (default: preset)")
    parser.add_argument("--new-tokens", type=int, help="generated tokens per sequence (default: preset)")
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per loss forward/backward")
    parser.add_argument("--steps", type=int, default=2, help="RL steps; the last is reported, the first is cold")
    args = parser.parse_args(argv)
    preset = PRESETS[args.preset]
    for field, value in (
        ("layers", preset.layers),
        ("prompt_len", preset.prompt_len),
        ("new_tokens", preset.new_tokens),
        ("decompose_layers", preset.decompose_layers),
        ("baseline_layers", preset.baseline_layers),
    ):
        if getattr(args, field) is None:
            setattr(args, field, value)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) in --skip: {', '.join(sorted(unknown))}; valid: {', '.join(PHASES)}")
    if args.layers < 1 or args.steps < 1 or args.samples < 2:
        parser.error("--layers and --steps must be >= 1, --samples >= 2 (the group baseline)")
    return args


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name}: no CUDA device is visible to torch {torch.__version__}")
    return torch.device(name)


def build(report: dict[str, Any], preset: Preset, args: argparse.Namespace, device: torch.device, label: str):
    """Build the model on the device and record what was built."""
    log(f"building {label} with random bf16 weights on {device}")
    seconds, model = timed(lambda: build_model(preset, args.layers, device), device)
    first = next(model.parameters())
    rope = getattr(model.config, "rope_parameters", None) or {"rope_theta": getattr(model.config, "rope_theta", None)}
    report["build"] = {
        "seconds": seconds,
        "model_gib": gib(model_bytes(model)),
        "allocated_gib": gib(allocated(device)),
        "rope": rope,
        "parameters": sum(t.numel() for t in model.parameters()),
        "dtype": str(first.dtype),
        "on": str(first.device),
    }
    log(
        f"built in {seconds:.1f} s: {report['build']['parameters']:,} parameters, "
        f"{model_bytes(model) / GIB:.2f} GiB {first.dtype} on {first.device}, rope {rope}"
    )
    return model


def make_svf(report: dict[str, Any], model, args: argparse.Namespace, device: torch.device):
    """SVFModel over stand-in factors resident on the device, or None (recorded) if that fails."""
    from t2cli.svf.model import SVFModel

    try:
        names = [m.name for m in chosen_targets(args.layers, args.targets)]
        seconds, factors = timed(lambda: stand_in_factors(model, names, device), device)
        svf = SVFModel(model, factors)
    except Exception as exc:  # recorded; swap and step then say why they did not run
        report["factors"] = {"error": f"{type(exc).__name__}: {exc}"}
        log(f"factors FAILED: {type(exc).__name__}: {exc}")
        return None
    report["factors"] = {
        "matrices": len(factors),
        "gib": gib(factor_bytes(factors)),
        "stand_in": True,
        "seconds": seconds,
        "allocated_gib": gib(allocated(device)),
    }
    log(
        f"stand-in factors for {len(factors)} matrices: {factor_bytes(factors) / GIB:.2f} GiB "
        f"(allocated now {_fmt_gib(gib(allocated(device)))})"
    )
    return svf


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = PRESETS[args.preset]
    label = (
        f"{args.preset} shapes, {args.layers} layers, targets {args.targets}, "
        f"{args.prompts}x{args.samples} sequences of {args.prompt_len}+{args.new_tokens} tokens"
    )
    est = estimate(preset, args.layers, args.targets, args)
    print_estimate(est, label)
    if args.estimate_only:
        return 0

    device = resolve_device(args.device)
    env = environment(device)
    config = {
        k: sorted(v) if isinstance(v, set) else str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
    }
    plan = memory_plan_rows(preset, args.layers, args.targets)
    report: dict[str, Any] = {
        "config": config,
        "preset": asdict(preset),
        "environment": env,
        "estimate_h200": est,
        "memory_plan_gib": plan,
        "phases": {},
    }
    log(
        f"device {device}: {env['gpu'] or 'CPU'}; torch {env['torch']}, CUDA {env['cuda']}, "
        f"transformers {env['transformers']}, Python {env['python']}"
    )
    model = build(report, preset, args, device, label)
    write_json(args.json, report)

    if "decompose" not in args.skip:
        run_phase("decompose", report, lambda: decompose_phase(model, preset, args, device), device, args.json)
    svf = make_svf(report, model, args, device) if {"swap", "step"} - args.skip else None
    for name, fn in (
        ("swap", lambda: swap_phase(svf, model, args, device)),
        ("step", lambda: rl_step_phase(svf, model, preset, args, device, plan)),
    ):
        if name in args.skip:
            continue
        if svf is None:
            report["phases"][name] = {"error": "skipped: no factors (see 'factors' in the JSON)"}
            continue
        run_phase(name, report, fn, device, args.json)

    report["total_s"] = time.perf_counter() - T0
    write_json(args.json, report)
    print(
        f"\nFigures: {label}; {env['gpu'] or 'CPU'}, torch {env['torch']}, CUDA {env['cuda']}; "
        f"{report['total_s']:.0f} s in all"
    )
    print(table(report))
    if args.json:
        print(f"\nJSON: {args.json}")
    return 0 if all("error" not in v for v in report["phases"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
