"""Memory plan of SVF training and decomposition, computed from a model's shapes (no weights needed).

    python bench/memory_plan.py                                # Llama-3-8B and Llama-3-70B, all targets
    python bench/memory_plan.py --targets mlp                  # gate/up/down only (the reference code's set)
    python bench/memory_plan.py --config path/to/config.json   # any Llama-like HF config
    python bench/memory_plan.py --vlm llava-next-8b            # the paper's VLM, with and without the vision tower

Every number is arithmetic on shapes, laid out as t2 holds the tensors, replicated
(data parallel, the first table) and with ``t2 train --shard fsdp`` (the second);
docs/scaling.md explains each row. A weight matrix W is m x n (out x in), its
rank r = min(m, n); the factors are U (m x r), S (r), Vh (r x n), float32.
GiB = 2^30 bytes.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

GIB = 2**30
BASE_BYTES = 2  # bfloat16 base weights (t2 train --dtype auto on CUDA)
F32, F64 = 4, 8
ROLES = ("q", "k", "v", "o", "gate", "up", "down")
TARGET_SETS = {"all": ROLES, "attn": ROLES[:4], "mlp": ROLES[4:]}


@dataclass(frozen=True)
class Shapes:
    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None
    tied_embeddings: bool = False

    @property
    def dim(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def matrices(self) -> dict[str, tuple[int, int]]:
        """(m, n) = (out, in) of each adapted matrix of one layer."""
        h, i, d = self.hidden, self.intermediate, self.dim
        return {
            "q": (self.heads * d, h),
            "k": (self.kv_heads * d, h),
            "v": (self.kv_heads * d, h),
            "o": (h, self.heads * d),
            "gate": (i, h),
            "up": (i, h),
            "down": (h, i),
        }

    def total_params(self) -> int:
        per_layer = sum(m * n for m, n in self.matrices().values()) + 2 * self.hidden  # + 2 RMSNorm weights
        embeddings = self.vocab * self.hidden * (1 if self.tied_embeddings else 2)
        return self.layers * per_layer + embeddings + self.hidden  # + final norm


PRESETS = {
    "llama3-8b": Shapes("Llama-3-8B", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128256),
    "llama3-70b": Shapes("Llama-3-70B", layers=80, hidden=8192, intermediate=28672, heads=64, kv_heads=8, vocab=128256),
}


def from_hf_config(path: Path) -> Shapes:
    raw = json.loads(path.read_text())
    return Shapes(
        name=raw.get("_name_or_path") or path.parent.name,
        layers=raw["num_hidden_layers"],
        hidden=raw["hidden_size"],
        intermediate=raw["intermediate_size"],
        heads=raw["num_attention_heads"],
        kv_heads=raw.get("num_key_value_heads", raw["num_attention_heads"]),
        vocab=raw["vocab_size"],
        head_dim=raw.get("head_dim"),
        tied_embeddings=bool(raw.get("tie_word_embeddings", False)),
    )


# t2cli.decompose.svd.CHECK_BLOCK_BYTES: the reconstruction check runs this many bytes of float64 rows at a time.
CHECK_BLOCK = 16 * 2**20


def factor_bytes(m: int, n: int) -> int:
    """U (m x r), S (r), Vh (r x n) in float32."""
    r = min(m, n)
    return (m * r + r + r * n) * F32


def finish_bytes(m: int, n: int) -> int:
    """t2cli.decompose.svd._finish of one matrix: the sign-fixed copies of its factors, and the float64 check
    (the square factor and three float64 blocks of rows: W, U diag(S), the residual)."""
    r = min(m, n)
    return factor_bytes(m, n) + (r * r + r) * F64 + 3 * min(CHECK_BLOCK, m * n * F64)


def svd_transient_bytes(m: int, n: int) -> int:
    """The short-lived memory of one matrix's gesdd in t2cli.decompose.svd, beyond its input and float32 factors:
    the larger of gesdd (a float32 copy of W, LAPACK's own copy, sgesdd's work arrays) and ``_finish``."""
    r = min(m, n)
    return max((2 * m * n + 4 * r * r + 7 * r) * F32, finish_bytes(m, n))


def decompose_matrix_bytes(m: int, n: int) -> int:
    """Peak of one matrix on the CPU path (t2cli.decompose.engine reads one per thread; several only under 64 MiB)."""
    return m * n * BASE_BYTES + factor_bytes(m, n) + svd_transient_bytes(m, n)


def chunk_count(m: int, n: int) -> int:
    """t2cli.decompose.engine.plan_chunks: up to 8 same-shape matrices, closed once their float32 input >= 1 GiB."""
    return min(8, -(-GIB // (F32 * m * n)))


def decompose_chunk_bytes(m: int, n: int, count: int, *, stored: bool = True) -> int:
    """Peak of a GPU chunk (``gesdd-batched``): ``count`` inputs, then the larger of the batched SVD (the
    stacked float32 copies, torch's copy of the stack, ``count`` factor sets; cuSOLVER's workspace not
    counted) and the checks (``count`` factor sets, one ``_finish`` at a time).
    ``stored=False`` leaves out the inputs (when they are the model's, resident already)."""
    inputs = count * m * n * BASE_BYTES if stored else 0
    svd = count * (2 * m * n * F32 + factor_bytes(m, n))
    checks = count * factor_bytes(m, n) + finish_bytes(m, n)
    return inputs + max(svd, checks)


def plan(shapes: Shapes, targets: str) -> tuple[str, list[tuple[str, float, str]]]:
    """A line of facts, and (row, GiB, how it is computed) rows, for one model and target set."""
    layer = {role: mn for role, mn in shapes.matrices().items() if role in TARGET_SETS[targets]}
    L = shapes.layers
    target_params = L * sum(m * n for m, n in layer.values())
    factor_floats = L * sum(m * min(m, n) + min(m, n) + min(m, n) * n for m, n in layer.values())
    rank_sum = L * sum(min(m, n) for m, n in layer.values())
    m_big, n_big = max(layer.values(), key=lambda mn: mn[0] * mn[1])
    r_big = min(m_big, n_big)
    h, i, kv = shapes.hidden, shapes.intermediate, shapes.kv_heads * shapes.dim

    base = shapes.total_params() * BASE_BYTES
    factors = factor_floats * F32
    z_state = rank_sum * F32 * 5  # z, its grad, AdamW exp_avg and exp_avg_sq, the best z so far
    composed = target_params * BASE_BYTES
    grad_w = target_params * BASE_BYTES
    backward_transient = (m_big * n_big + 2 * m_big * r_big) * F32
    compose_transient = 2 * m_big * n_big * F32
    resident = base + factors + z_state + composed + grad_w + max(backward_transient, compose_transient)
    # Saved activations of one decoder layer per token (bf16): 2 norm inputs + 2 norm outputs, q/k/v,
    # attention output, gate, up, silu(gate), silu(gate)*up; plus logits: bf16 [L, V] for every token,
    # and for completion tokens a float32 copy and its float32 log-softmax (t2cli.runtime.generation.completion_logprobs).
    act_per_token = L * (7 * h + 2 * kv + 4 * i) * BASE_BYTES
    logits_per_token = shapes.vocab * BASE_BYTES
    logprob_per_completion_token = shapes.vocab * (BASE_BYTES + 2 * F32)
    kv_per_token = L * 2 * kv * BASE_BYTES

    workers = 2  # CPU: t2 decomposes one matrix per torch thread at once; a row below is per thread
    per_thread = max(decompose_matrix_bytes(m, n) for m, n in layer.values())
    chunked = max(decompose_chunk_bytes(m, n, chunk_count(m, n)) for m, n in layer.values())

    facts = (
        f"{shapes.name}: {shapes.total_params() / 1e9:.2f}B parameters, {target_params / 1e9:.2f}B adapted "
        f"in {L * len(layer)} matrices, {factor_floats / 1e9:.2f}B factor floats "
        f"({factor_floats / target_params:.2f} x), z length sum r = {rank_sum:,}, largest matrix {m_big}x{n_big}"
    )
    return facts, [
        ("base weights, bf16 (all parameters)", base / GIB, "parameters x 2 B"),
        ("  of which adapted matrices", target_params * BASE_BYTES / GIB, "sum of m*n x 2 B"),
        ("SVD factors U, S, Vh, float32", factors / GIB, "sum of (m*r + r + r*n) x 4 B"),
        ("z + grad + AdamW m, v + best z, float32", z_state / GIB, "5 x sum of r x 4 B"),
        ("composed W'(z), bf16 (held for the step)", composed / GIB, "one copy of the adapted matrices"),
        ("dL/dW', bf16 (leaf grads, loss phase)", grad_w / GIB, "one copy of the adapted matrices"),
        ("autograd-saved by W'(z)", 0.0, "none new: the graph keeps references to U, S, Vh only"),
        ("backward W' -> z, transient", backward_transient / GIB, "largest adapted matrix: float32 m*n + 2 m*r"),
        ("composition, transient", compose_transient / GIB, "largest matrix: float32 W and delta"),
        ("resident during a step (no activations)", resident / GIB, "sum of the rows above (one transient)"),
        (
            "+ loss activations per 1k tokens",
            (act_per_token + logits_per_token) * 1000 / GIB,
            "bf16, approx.; all positions' logits included",
        ),
        (
            "+ log-softmax per 1k completion tokens",
            logprob_per_completion_token * 1000 / GIB,
            "bf16 window + float32 copy + float32 log-softmax",
        ),
        ("+ KV cache per 1k rollout tokens", kv_per_token * 1000 / GIB, "bf16 K and V, every layer"),
        (
            "decompose peak, CPU, per thread",
            per_thread / GIB,
            "one matrix as stored + float32 factors + max(gesdd's copies, signed factors + blocked float64 check)",
        ),
        (
            f"decompose peak, CPU, {workers} threads",
            workers * per_thread / GIB,
            "t2 reads as many matrices as it has threads",
        ),
        (
            "decompose peak, GPU, t2's same-shape chunks",
            chunked / GIB,
            "<= 8 matrices, <= 1 GiB float32 input: batched SVD of the stacked float32 copies, then one check at a time",
        ),
    ]


def sharded_plan(shapes: Shapes, targets: str, shards: int) -> list[tuple[str, float, str]]:
    """(row, GiB per rank, how) under ``t2 train --shard fsdp`` over ``shards`` ranks (t2cli/svf/sharded.py)."""
    layer = {role: mn for role, mn in shapes.matrices().items() if role in TARGET_SETS[targets]}
    L, N = shapes.layers, shards
    target_params = L * sum(m * n for m, n in layer.values())
    factor_floats = L * sum(m * min(m, n) + min(m, n) + min(m, n) * n for m, n in layer.values())
    rank_sum = L * sum(min(m, n) for m, n in layer.values())
    m_big, n_big = max(layer.values(), key=lambda mn: mn[0] * mn[1])
    r_big = min(m_big, n_big)
    per_layer = sum(m * n for m, n in shapes.matrices().values()) + 2 * shapes.hidden
    embeddings = shapes.vocab * shapes.hidden * (1 if shapes.tied_embeddings else 2)

    live = shapes.total_params() * BASE_BYTES / N  # FSDP's shards: W'(z) for targets, W elsewhere
    base_copy = target_params * BASE_BYTES / N  # t2's shard of W, to compose from and restore
    factors = factor_floats * F32 / N
    z_state = rank_sum * F32 * 5
    gathered = (2 * per_layer + embeddings) * BASE_BYTES  # this layer + the prefetched next one + the root unit
    z_grad = (m_big * r_big + r_big * n_big) * F32  # full U and Vh of one matrix in its backward
    refresh = (r_big * n_big + 2 * -(-m_big // N) * n_big) * F32  # full Vh + this rank's rows of delta and W'
    resident = live + base_copy + factors + z_state + gathered + max(z_grad, refresh)
    return [
        ("live weights (FSDP shards: W'(z) for targets, W elsewhere), bf16", live, f"parameters x 2 B / {N}"),
        ("base W of the adapted matrices (t2's shards), bf16", base_copy, f"sum of m*n x 2 B / {N}"),
        ("SVD factors U, S, Vh (DTensor shards), float32", factors, f"sum of (m*r + r + r*n) x 4 B / {N}"),
        ("z + grad + AdamW m, v + best z, float32 (replicated)", z_state, "5 x sum of r x 4 B"),
        ("composed W'(z) or dL/dW' copies", 0.0, "none: W' is the live weight, dL/dz is computed per layer"),
        ("gathered for a forward: one layer + the next + root", gathered, "FSDP all-gather, bf16 (embeddings incl.)"),
        ("dL/dz of one matrix, transient", z_grad, "its full U and Vh, float32"),
        ("composing this rank's rows of W', transient", refresh, "full Vh + m/N rows of delta and W', float32"),
        ("resident during a step (no activations)", resident, "sum of the rows above (one transient)"),
    ]


# --------------------------------------------------------------------------- vision-language models


@dataclass(frozen=True)
class VisionShapes:
    """A CLIP-like vision tower (LLaVA's): ``layers`` pre-norm blocks of q, k, v, o (with biases), fc1, fc2."""

    name: str
    layers: int
    hidden: int
    intermediate: int
    heads: int
    image_size: int
    patch_size: int

    @property
    def tokens_per_tile(self) -> int:
        """Patches of one image tile plus the CLS token."""
        return (self.image_size // self.patch_size) ** 2 + 1

    def matrices(self) -> dict[str, tuple[int, int]]:
        h, i = self.hidden, self.intermediate
        return {"q": (h, h), "k": (h, h), "v": (h, h), "o": (h, h), "fc1": (i, h), "fc2": (h, i)}

    def total_params(self) -> int:
        h = self.hidden
        per_layer = sum(m * n + m for m, n in self.matrices().values()) + 4 * h  # + biases, 2 LayerNorms
        embeddings = 3 * self.patch_size**2 * h + h + self.tokens_per_tile * h  # patch conv, CLS, positions
        return self.layers * per_layer + embeddings + 4 * h  # + pre and post LayerNorm


@dataclass(frozen=True)
class VLMShapes:
    """A LLaVA-like model: a language model, a vision tower run on several tiles per image, a 2-layer projector."""

    name: str
    language: Shapes
    vision: VisionShapes
    projector: dict[str, tuple[int, int]]  # (out, in) of each projector matrix
    tiles: int  # vision tower passes per image, at most (LLaVA-NeXT "anyres": the base view + the grid tiles)
    image_tokens: int  # language-model tokens per image, at most
    prompt_tokens: int  # chat template + question, text tokens (an assumption, stated in the table)
    answer_tokens: int  # the answer budget (t2's textvqa/okvqa max_new_tokens)

    def total_params(self) -> int:
        projector = sum(m * n + m for m, n in self.projector.values())
        return self.language.total_params() + self.vision.total_params() + projector + self.language.hidden

    @property
    def sequence_tokens(self) -> int:
        return self.image_tokens + self.prompt_tokens + self.answer_tokens


# LLaVA-NeXT on Llama 3 8B (t2 alias llava-next-8b = llava-hf/llama3-llava-next-8b-hf), from its published
# architecture, no download: the language model is Llama-3-8B (32 layers, hidden 4096, MLP 14336, 32 heads,
# 8 KV heads) with the vocabulary padded to 128,320 by the llava-hf conversion (Llama 3's 128,256 + the image
# and pad tokens, rounded up to a multiple of 64); the vision tower is CLIP ViT-L/14 at 336 px (24 layers,
# hidden 1024, MLP 4096, 16 heads, 14 px patches: 576 patches + CLS per tile); the projector is
# linear_1 1024 -> 4096, GELU, linear_2 4096 -> 4096 (plus a learned image_newline vector of 4096).
# "anyres" with grid pinpoints up to 672x672: the base 336 px view + a 2x2 grid = 5 tower passes, and
# 576 + 48 x (48 + 1 newline) = 2,928 image tokens for a square picture, the most any pinpoint gives.
LLAVA_NEXT_8B = VLMShapes(
    name="LLaVA-NeXT-8B",
    language=Shapes("Llama-3-8B", layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8, vocab=128320),
    vision=VisionShapes(
        "CLIP ViT-L/14-336", layers=24, hidden=1024, intermediate=4096, heads=16, image_size=336, patch_size=14
    ),
    projector={"linear_1": (4096, 1024), "linear_2": (4096, 4096)},
    tiles=5,
    image_tokens=576 + 48 * 49,
    prompt_tokens=48,
    answer_tokens=16,
)
VLM_PRESETS = {"llava-next-8b": LLAVA_NEXT_8B}
# The reference settings (docs/method.md, REFERENCE.md): 256 rollouts per step, greedy (one sample per prompt).
REFERENCE_BATCH = 256
GPU_MEMORY = {"H100 80 GB": 79.6, "H200 141 GB": 139.8}  # GiB usable by torch (what torch reports as total)


def _matrix_sums(matrices: list[tuple[int, int]]) -> tuple[int, int, int]:
    """(sum m*n, sum of factor floats m*r + r + r*n, sum r) over a list of matrices."""
    params = sum(m * n for m, n in matrices)
    factors = sum(m * min(m, n) + min(m, n) + min(m, n) * n for m, n in matrices)
    return params, factors, sum(min(m, n) for m, n in matrices)


def language_sequence_bytes(vlm: VLMShapes) -> tuple[int, int]:
    """(saved activations, answer log-softmax) of one sequence in the language model's loss forward, bytes.

    The forward saves, for every position, what the language model's layers need for backward (the formula
    of ``plan``: bf16 norms, q/k/v, attention output, MLP) and the bf16 logits of every position, plus float32
    log-softmax windows for the answer tokens. The image tokens are positions like any other.
    """
    lm = vlm.language
    kv = lm.kv_heads * lm.dim
    per_position = lm.layers * (7 * lm.hidden + 2 * kv + 4 * lm.intermediate) * BASE_BYTES + lm.vocab * BASE_BYTES
    return vlm.sequence_tokens * per_position, vlm.answer_tokens * lm.vocab * (BASE_BYTES + 2 * F32)


def vlm_plan(
    vlm: VLMShapes, *, vision: bool, micro_batch: int, gen_batch: int, targets: str = "all"
) -> tuple[str, list[tuple[str, float, str]]]:
    """(facts, rows of (label, GiB, how)) for SVF-RL on ``vlm``: the language model's ``targets`` (attn, mlp, all)
    adapted, and with ``vision`` the vision tower's attention and MLP too (t2's ``--targets vision`` group; the
    projector's 2 matrices would add 0.1 GiB of factors)."""
    lm, vt = vlm.language, vlm.vision
    lm_matrices = [mn for role, mn in lm.matrices().items() if role in TARGET_SETS[targets]] * lm.layers
    vt_matrices = [mn for mn in vt.matrices().values()] * vt.layers if vision else []
    targets = lm_matrices + vt_matrices
    params, factor_floats, rank_sum = _matrix_sums(targets)
    m_big, n_big = max(targets, key=lambda mn: mn[0] * mn[1])
    r_big = min(m_big, n_big)
    kv = lm.kv_heads * lm.dim

    base = vlm.total_params() * BASE_BYTES
    factors = factor_floats * F32
    z_state = rank_sum * F32 * 5
    composed = grad_w = params * BASE_BYTES
    transient = max((m_big * n_big + 2 * m_big * r_big) * F32, 2 * m_big * n_big * F32)
    resident = base + factors + z_state + composed + grad_w + transient

    tokens = vlm.sequence_tokens
    lm_act, logsoftmax = language_sequence_bytes(vlm)
    # With the tower targeted, its forward is recorded too: per tile token and layer, bf16 LayerNorm inputs
    # and outputs (4h), q, k, v and the attention output (4h, SDPA keeps no score matrix) and fc1 before and
    # after GELU (2i). Without it the tower runs outside autograd's record (nothing of it needs a gradient).
    vt_act = vlm.tiles * vt.tokens_per_tile * vt.layers * (8 * vt.hidden + 2 * vt.intermediate) * BASE_BYTES
    per_sequence = lm_act + logsoftmax + (vt_act if vision else 0)
    kv_cache = tokens * lm.layers * 2 * kv * BASE_BYTES  # bf16 K and V of one rollout, every layer
    loss_peak = resident + micro_batch * per_sequence
    rollout_peak = base + factors + z_state + composed + gen_batch * kv_cache

    # Decomposition: llava-hf checkpoints store language_model.model.* keys that transformers renames on load,
    # so t2 reads the weights through the loaded model (docs/vlm.md): the whole model, plus two matrices in flight.
    workers = 2
    per_thread = max(decompose_matrix_bytes(m, n) for m, n in targets)
    chunked = max(decompose_chunk_bytes(m, n, chunk_count(m, n), stored=False) for m, n in set(targets))

    what = f"language model {targets}" + (" + vision tower" if vision else "")
    facts = (
        f"{vlm.name} ({what}): {vlm.total_params() / 1e9:.2f}B parameters ({lm.total_params() / 1e9:.2f}B language "
        f"model, {vt.total_params() / 1e6:.0f}M vision tower); {len(targets)} adapted matrices, "
        f"{params / 1e9:.2f}B adapted weights, z length sum r = {rank_sum:,}; a sequence = {vlm.image_tokens:,} "
        f"image + {vlm.prompt_tokens} prompt + {vlm.answer_tokens} answer tokens, the tower on {vlm.tiles} tiles of "
        f"{vt.tokens_per_tile} tokens"
    )
    fits = {gpu: _largest_batch(cap * GIB - resident, per_sequence) for gpu, cap in GPU_MEMORY.items()}
    rollouts = {
        gpu: _largest_batch(cap * GIB - rollout_peak + gen_batch * kv_cache, kv_cache)
        for gpu, cap in GPU_MEMORY.items()
    }
    return facts, [
        ("base weights, bf16 (language model + vision tower + projector)", base / GIB, "parameters x 2 B"),
        ("SVD factors U, S, Vh, float32", factors / GIB, "sum of (m*r + r + r*n) x 4 B"),
        ("z + grad + AdamW m, v + best z, float32", z_state / GIB, "5 x sum of r x 4 B"),
        ("composed W'(z) + dL/dW', bf16", (composed + grad_w) / GIB, "two copies of the adapted matrices"),
        ("backward W' -> z or composition, transient", transient / GIB, "largest adapted matrix, float32"),
        ("resident during a step (no activations)", resident / GIB, "sum of the rows above"),
        (
            "+ loss activations per sequence (one image), language model",
            lm_act / GIB,
            f"{tokens:,} positions x (saved layer inputs + bf16 logits), approx.",
        ),
        (
            "+ loss activations per sequence, vision tower",
            (vt_act if vision else 0) / GIB,
            f"{vlm.tiles} x {vt.tokens_per_tile} tokens x {vt.layers} layers x (8h + 2i) x 2 B"
            if vision
            else "none: nothing in the tower needs a gradient",
        ),
        ("+ answer log-softmax per sequence", logsoftmax / GIB, f"{vlm.answer_tokens} tokens x vocab x (2 + 8) B"),
        (
            f"loss phase peak, micro-batch {micro_batch}",
            loss_peak / GIB,
            f"resident + {micro_batch} x per-sequence rows (t2 train --micro-batch {micro_batch})",
        ),
        ("+ KV cache per rollout sequence", kv_cache / GIB, f"{tokens:,} tokens x bf16 K and V, every layer"),
        (
            f"rollout phase peak, {gen_batch} sequences per generate",
            rollout_peak / GIB,
            f"base + factors + z + W'(z) + {gen_batch} KV caches (--batch-size {gen_batch})",
        ),
        *[
            (f"largest --micro-batch on an {gpu}", float(n), "sequences whose loss activations fit beside the resident")
            for gpu, n in fits.items()
        ],
        *[
            (
                f"largest --batch-size (rollouts) on an {gpu}",
                float(n),
                "sequences whose KV caches fit beside the weights",
            )
            for gpu, n in rollouts.items()
        ],
        (
            f"decompose peak, CPU, {workers} threads",
            (base + workers * per_thread) / GIB,
            "the loaded model (renamed checkpoint keys) + one matrix per thread in flight",
        ),
        (
            "decompose peak, GPU, t2's same-shape chunks",
            (base + chunked) / GIB,
            "the loaded model + <= 8 matrices' batched SVD and checks",
        ),
        ("stored factors (the decomposition on disk)", factors / GIB, "float32 safetensors blobs"),
    ]


def vlm_sharded_plan(vlm: VLMShapes, shards: int, *, targets: str = "all") -> list[tuple[str, float, str]]:
    """(row, GiB per rank, how) for SVF-RL on ``vlm`` under ``t2 train --shard fsdp`` over ``shards`` ranks.

    t2 shards the language model as for a text model (``sharded_plan``) and keeps the vision tower and projector
    whole on every rank, outside FSDP (t2cli/svf/sharded.py); their matrices cannot be targets then. A rank's
    loss activations are those of its own sequences, as without sharding.
    """
    lm, vt = vlm.language, vlm.vision
    lm_rows = sharded_plan(lm, targets, shards)
    lm_resident = lm_rows[-1][1]
    image_side = (vt.total_params() + sum(m * n + m for m, n in vlm.projector.values()) + lm.hidden) * BASE_BYTES
    resident = lm_resident + image_side
    per_sequence = sum(language_sequence_bytes(vlm))
    fits = {gpu: _largest_batch(cap * GIB - resident, per_sequence) for gpu, cap in GPU_MEMORY.items()}
    return [
        (
            "language model, resident per rank (FSDP shards, t2's shards, factors, z, gathered layers)",
            lm_resident / GIB,
            "the text table's --shard fsdp rows, this many ranks",
        ),
        (
            "vision tower + projector, bf16, replicated",
            image_side / GIB,
            "whole on every rank, outside FSDP",
        ),
        ("resident during a step per rank (no activations)", resident / GIB, "sum of the rows above"),
        ("+ loss activations per sequence (one image)", per_sequence / GIB, "as unsharded: a rank's own sequences"),
        *[
            (f"largest --micro-batch on an {gpu}", float(n), "sequences whose loss activations fit beside the resident")
            for gpu, n in fits.items()
        ],
    ]


def _largest_batch(free: float, per_item: float) -> int:
    return max(0, int(free // per_item)) if per_item > 0 else 0


def print_vlm(vlm: VLMShapes, micro_batch: int, gen_batch: int, targets: str = "all") -> None:
    """The VLM table: language-model targets against language model + vision tower, at the reference settings."""
    columns = [
        vlm_plan(vlm, vision=v, micro_batch=micro_batch, gen_batch=gen_batch, targets=targets) for v in (False, True)
    ]
    for facts, _ in columns:
        print(facts)
    print()
    print(
        f"SVF-RL at the reference settings: {REFERENCE_BATCH} rollouts per step (greedy, one per prompt), answers of "
        f"<= {vlm.answer_tokens} tokens, prompts of ~{vlm.prompt_tokens} text tokens (an assumption) and one image "
        f"each at the most image tokens anyres gives; t2 splits the step into micro-batches "
        f"({-(-REFERENCE_BATCH // micro_batch)} of {micro_batch}) and generate calls of {gen_batch}."
    )
    print()
    roles = ", ".join(TARGET_SETS[targets])
    print(f"| {vlm.name}, targets | language model ({roles}) | + vision tower (q, k, v, o, fc1, fc2) | how |")
    print("|---|---|---|---|")
    for row in range(len(columns[0][1])):
        label, _, how = columns[0][1][row]
        values = []
        for _, rows in columns:
            value = rows[row][1]
            if label.startswith("largest"):
                values.append(f"{value:.0f}")
            else:
                values.append(f"{value:,.1f}" if value >= 0.1 or value == 0 else f"{value:.3f}")
        how_text = columns[1][1][row][2] if "vision tower" in label else how
        print(f"| {label} | {' | '.join(values)} | {how_text} |")
    print()
    shard_counts = (2, 4, 8)
    sharded = [vlm_sharded_plan(vlm, n, targets=targets) for n in shard_counts]
    print(
        f"| {vlm.name}, --shard fsdp, language model ({roles}) | "
        + " | ".join(f"{n} ranks" for n in shard_counts)
        + " | how |"
    )
    print("|---|" + "---|" * len(shard_counts) + "---|")
    for row in range(len(sharded[0])):
        label, _, how = sharded[0][row]
        values = [f"{rows[row][1]:.0f}" if label.startswith("largest") else f"{rows[row][1]:,.1f}" for rows in sharded]
        print(f"| {label} | {' | '.join(values)} | {how} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, action="append", help="HF config.json (repeatable); default: presets")
    parser.add_argument("--targets", choices=sorted(TARGET_SETS), default="all")
    parser.add_argument("--shards", type=int, default=8, help="ranks of the --shard fsdp table")
    parser.add_argument("--vlm", choices=sorted(VLM_PRESETS), help="a vision-language model's table instead")
    parser.add_argument("--micro-batch", type=int, default=16, help="--vlm: sequences per loss forward (t2's default)")
    parser.add_argument("--gen-batch", type=int, default=64, help="--vlm: sequences per generate call (t2's default)")
    args = parser.parse_args()
    if args.vlm:
        print_vlm(VLM_PRESETS[args.vlm], args.micro_batch, args.gen_batch, args.targets)
        return
    models = [from_hf_config(p) for p in args.config] if args.config else list(PRESETS.values())

    facts, plans = zip(*(plan(s, args.targets) for s in models))
    for line in facts:
        print(line)
    print()
    head = (
        f"| targets: {args.targets} ({', '.join(TARGET_SETS[args.targets])}) | "
        + " | ".join(f"{s.name} GiB" for s in models)
        + " | how |"
    )
    print(head)
    print("|" + "---|" * (len(models) + 2))
    for row in range(len(plans[0])):
        label, _, how = plans[0][row]
        values = " | ".join(
            f"{p[row][1]:,.1f}" if p[row][1] >= 0.1 or p[row][1] == 0 else f"{p[row][1]:.3f}" for p in plans
        )
        print(f"| {label} | {values} | {how} |")
    print()
    print(
        f"| --shard fsdp over {args.shards} ranks, per rank | "
        + " | ".join(f"{s.name} GiB" for s in models)
        + " | how |"
    )
    print("|" + "---|" * (len(models) + 2))
    sharded = [sharded_plan(s, args.targets, args.shards) for s in models]
    for row in range(len(sharded[0])):
        label, _, how = sharded[0][row]
        values = " | ".join(
            f"{p[row][1] / GIB:,.1f}" if p[row][1] >= 0.1 * GIB or p[row][1] == 0 else f"{p[row][1] / GIB:.3f}"
            for p in sharded
        )
        print(f"| {label} | {values} | {how} |")
    print("| + activations, log-softmax, KV cache | as above | | this rank's share of the prompts |")
    print()
    for s, p, q in zip(models, plans, sharded):
        replicated = dict((label, gib) for label, gib, _ in p)["resident during a step (no activations)"]
        per_rank = q[-1][1] / GIB
        print(
            f"{s.name}: {replicated:,.1f} GiB per rank replicated (data parallel) -> {per_rank:,.1f} GiB per rank "
            f"with --shard fsdp over {args.shards} ({replicated / per_rank:.1f}x less), before activations"
        )


if __name__ == "__main__":
    main()
