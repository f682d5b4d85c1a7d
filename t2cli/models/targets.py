"""Which weight matrices t2 adapts, named explicitly per architecture.

Each supported architecture lists its transformer-block matrices by role; the
user picks ``attn``, ``mlp``, ``all`` or a regular expression over the full
matrix names. Nothing is chosen by substring matching on parameter names, so
embeddings, norms and the LM head can never be picked up by accident.

A vision-language model (LLaVA, Idefics3 / SmolVLM, Qwen2-VL...) has three parts: its
language model, whose blocks are the default targets, a vision tower (``vision``) and a
projector from image features to the language model's embeddings (``projector``). The
last two are candidates too, so that the ``vision`` / ``projector`` groups or a regex
can name them, but ``all``, ``attn`` and ``mlp`` stay in the language model.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from t2cli.errors import TargetError, TargetValueError

TARGET_GROUPS = ("attn", "mlp", "all", "vision", "projector")
DEFAULT_TARGETS = "all"
NAMED_LANGUAGE_GROUPS = ("all", "attn", "mlp")  # the groups that select language-model matrices only

_LLAMA_LIKE_ROLES: dict[str, str] = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}


# Vision towers: roles are prefixed "vision." so that the ``attn`` / ``mlp`` groups (the first
# part of a role) never reach them.
_CLIP_LIKE_VISION_ROLES: dict[str, str] = {  # CLIP and SigLIP encoders (LLaVA, Idefics3, SmolVLM)
    "vision.attn.q": "self_attn.q_proj",
    "vision.attn.k": "self_attn.k_proj",
    "vision.attn.v": "self_attn.v_proj",
    "vision.attn.o": "self_attn.out_proj",
    "vision.mlp.fc1": "mlp.fc1",
    "vision.mlp.fc2": "mlp.fc2",
}
_QWEN2_VL_VISION_ROLES: dict[str, str] = {
    "vision.attn.qkv": "attn.qkv",
    "vision.attn.o": "attn.proj",
    "vision.mlp.fc1": "mlp.fc1",
    "vision.mlp.fc2": "mlp.fc2",
}
_QWEN2_5_VL_VISION_ROLES: dict[str, str] = {
    "vision.attn.qkv": "attn.qkv",
    "vision.attn.o": "attn.proj",
    "vision.mlp.gate": "mlp.gate_proj",
    "vision.mlp.up": "mlp.up_proj",
    "vision.mlp.down": "mlp.down_proj",
}


@dataclass(frozen=True)
class VisionLayout:
    """The image side of a vision-language model: its encoder's blocks and the projector's matrices."""

    block_prefix: str  # format string with {layer}, the vision tower's blocks
    roles: dict[str, str]  # role -> module path inside a vision block
    projector: dict[str, str]  # role -> full module name of each projector matrix


@dataclass(frozen=True)
class ArchitectureLayout:
    """Where the transformer blocks are and which matrices each holds (module names as transformers loads them)."""

    block_prefix: str  # format string with {layer}, the language model's blocks
    roles: dict[str, str]  # role -> module path inside a block
    vision: VisionLayout | None = None  # set for vision-language models


# Keyed by config.model_type. Gemma 1-2, Gemma 3's text-only 1B (gemma3_text) and Qwen3 use the same module
# names as Llama; model_type gemma3 (Gemma 3 4B-27B) is a vision-language model, below.
LAYOUTS: dict[str, ArchitectureLayout] = {
    model_type: ArchitectureLayout("model.layers.{layer}.", _LLAMA_LIKE_ROLES)
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
}
# Vision-language models, with the module names transformers 5 gives them once loaded
# (AutoModelForImageTextToText); their checkpoints may store other names, which transformers
# renames on load (see t2cli.decompose.engine). SmolVLM-256M/500M have model_type idefics3.
_IDEFICS3 = ArchitectureLayout(
    "model.text_model.layers.{layer}.",
    _LLAMA_LIKE_ROLES,
    VisionLayout(
        "model.vision_model.encoder.layers.{layer}.",
        _CLIP_LIKE_VISION_ROLES,
        {"projector.proj": "model.connector.modality_projection.proj"},
    ),
)
_LLAVA = ArchitectureLayout(
    "model.language_model.layers.{layer}.",
    _LLAMA_LIKE_ROLES,
    VisionLayout(
        "model.vision_tower.encoder.layers.{layer}.",
        _CLIP_LIKE_VISION_ROLES,
        {
            "projector.linear_1": "model.multi_modal_projector.linear_1",
            "projector.linear_2": "model.multi_modal_projector.linear_2",
        },
    ),
)
_QWEN_MERGER = {"projector.fc1": "model.visual.merger.mlp.0", "projector.fc2": "model.visual.merger.mlp.2"}
LAYOUTS.update(
    {
        "idefics3": _IDEFICS3,
        "smolvlm": _IDEFICS3,
        "llava": _LLAVA,
        "llava_next": _LLAVA,
        "qwen2_vl": ArchitectureLayout(
            "model.language_model.layers.{layer}.",
            _LLAMA_LIKE_ROLES,
            VisionLayout("model.visual.blocks.{layer}.", _QWEN2_VL_VISION_ROLES, _QWEN_MERGER),
        ),
        "qwen2_5_vl": ArchitectureLayout(
            "model.language_model.layers.{layer}.",
            _LLAMA_LIKE_ROLES,
            VisionLayout("model.visual.blocks.{layer}.", _QWEN2_5_VL_VISION_ROLES, _QWEN_MERGER),
        ),
        # Gemma 3's projector is a bare matrix (``mm_input_projection_weight``, applied as x @ W), not a
        # linear layer: t2 composes W' for linear layers only, so it lists no projector matrix. The
        # SigLIP tower's pooling head is left out too: Gemma 3 never runs it.
        "gemma3": ArchitectureLayout(
            "model.language_model.layers.{layer}.",
            _LLAMA_LIKE_ROLES,
            VisionLayout("model.vision_tower.encoder.layers.{layer}.", _CLIP_LIKE_VISION_ROLES, {}),
        ),
    }
)


@dataclass(frozen=True)
class TargetMatrix:
    """One adapted matrix: its module name, block index and role."""

    name: str  # module name, e.g. "model.layers.3.mlp.down_proj"; the weight is name + ".weight"
    layer: int  # block index in its stack (language model or vision tower); 0 for a projector matrix
    role: str  # e.g. "mlp.down", "vision.attn.q", "projector.proj"

    @property
    def part(self) -> str:
        """Which part of the model holds it: "language", "vision" or "projector"."""
        first = self.role.split(".")[0]
        return first if first in ("vision", "projector") else "language"

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"


# What a model card calls each vision-language family (keyed by model_type).
VLM_FAMILIES: dict[str, str] = {
    "idefics3": "Idefics3 / SmolVLM",
    "smolvlm": "SmolVLM",
    "llava": "LLaVA",
    "llava_next": "LLaVA-NeXT",
    "qwen2_vl": "Qwen2-VL",
    "qwen2_5_vl": "Qwen2.5-VL",
    "gemma3": "Gemma 3",
}
PART_NAMES = {"language": "language model", "vision": "vision tower", "projector": "projector"}


def layout_for(model_type: str) -> ArchitectureLayout:
    """The layout of a supported architecture, or a clear error listing the supported ones."""
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise TargetError(
            f"architecture {model_type!r} is not supported",
            f"supported: {', '.join(sorted(LAYOUTS))}",
        ) from None


def is_vision_language(model_type: str) -> bool:
    """True for a supported vision-language architecture (it loads as an image-text-to-text model)."""
    layout = LAYOUTS.get(model_type)
    return layout is not None and layout.vision is not None


def candidate_matrices(model_type: str, num_layers: int, *, vision_layers: int = 0) -> list[TargetMatrix]:
    """Every matrix t2 could adapt in this architecture, in layer then role order.

    The language model's blocks come first; for a vision-language model, then the vision
    tower's ``vision_layers`` blocks and the projector's matrices (none when ``vision_layers``
    is 0: callers that only know the language model's depth see only its matrices).
    """
    layout = layout_for(model_type)
    matrices = [
        TargetMatrix(layout.block_prefix.format(layer=layer) + module, layer, role)
        for layer in range(num_layers)
        for role, module in layout.roles.items()
    ]
    if layout.vision is not None and vision_layers > 0:
        vision = layout.vision
        matrices += [
            TargetMatrix(vision.block_prefix.format(layer=layer) + module, layer, role)
            for layer in range(vision_layers)
            for role, module in vision.roles.items()
        ]
        matrices += [TargetMatrix(name, 0, role) for role, name in vision.projector.items()]
    return matrices


def matrix_parts(model_type: str, num_layers: int, vision_layers: int, names: Iterable[str]) -> dict[str, int]:
    """How many of ``names`` sit in each part ("language", "vision", "projector"; "other" for names
    this layout does not list), from the explicit layout, never from name substrings."""
    part_of = {m.name: m.part for m in candidate_matrices(model_type, num_layers, vision_layers=vision_layers)}
    counts: dict[str, int] = {}
    for name in names:
        part = part_of.get(name, "other")
        counts[part] = counts.get(part, 0) + 1
    return counts


def roles_pattern(model_type: str, roles: Iterable[str]) -> str:
    """A ``--targets`` regex naming exactly the matrices of ``roles`` in this architecture, every layer.

    For specs no named group expresses, such as the language model's attention plus the vision
    tower (``t2 transfer`` decomposes the target's matrices of the roles the expert adapts).
    """
    layout = layout_for(model_type)
    wanted = set(roles)
    stacks = [(layout.block_prefix, layout.roles)]
    if layout.vision is not None:
        stacks.append((layout.vision.block_prefix, layout.vision.roles))
    alternatives = []
    for prefix, role_modules in stacks:
        modules = [re.escape(module) for role, module in role_modules.items() if role in wanted]
        if modules:
            head = re.escape(prefix.split("{layer}")[0]) + r"\d+" + re.escape(prefix.split("{layer}")[1])
            alternatives.append(head + "(?:" + "|".join(modules) + ")")
    if layout.vision is not None:
        alternatives += [re.escape(name) for role, name in layout.vision.projector.items() if role in wanted]
    if not alternatives:
        raise TargetValueError(f"no matrix of a {model_type} model has one of the roles {sorted(wanted)}")
    return "^(?:" + "|".join(alternatives) + ")$"


def select_targets(
    model_type: str, num_layers: int, spec: str = DEFAULT_TARGETS, *, vision_layers: int = 0
) -> list[TargetMatrix]:
    """Resolve ``attn`` / ``mlp`` / ``all`` / ``vision`` / ``projector`` or a regex (searched in full matrix names).

    ``all``, ``attn`` and ``mlp`` select the language model's matrices only; a regex is
    searched in every candidate's name, a vision-language model's vision tower and projector
    included (``vision_layers``: the vision tower's depth, 0 for a text model).
    """
    candidates = candidate_matrices(model_type, num_layers, vision_layers=vision_layers)
    layout = layout_for(model_type)
    if spec == "projector" and layout.vision is not None and not layout.vision.projector:
        raise TargetValueError(
            f"--targets projector: the {VLM_FAMILIES.get(model_type, model_type)} projector is a bare matrix, "
            "not a linear layer, and t2 adapts linear layers only",
            f"use {_groups_hint(model_type)}",
        )
    if spec == "all":
        chosen = [m for m in candidates if m.part == "language"]
    elif spec in ("attn", "mlp"):
        chosen = [m for m in candidates if m.role.split(".")[0] == spec]
    elif spec in ("vision", "projector"):
        chosen = [m for m in candidates if m.part == spec]
    else:
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise TargetValueError(
                f"--targets {spec!r} is not a valid regular expression ({exc})",
                f"use {_groups_hint(model_type)}, or a regex such as 'layers\\.1[0-9]\\.mlp'",
            ) from None
        chosen = [m for m in candidates if pattern.search(m.name)]
    if not chosen:
        example = candidates[0].name if candidates else "model.layers.0.mlp.up_proj"
        raise TargetValueError(
            f"--targets {spec!r} matches no matrix of this {model_type} model",
            f"use {_groups_hint(model_type)}, or a regex over names like {example!r}",
        )
    return chosen


def _groups_hint(model_type: str) -> str:
    """The named groups that make sense for this architecture, for error hints."""
    layout = LAYOUTS.get(model_type)
    if layout is None or layout.vision is None:
        return "attn, mlp, all"
    return "attn, mlp, all, vision, projector" if layout.vision.projector else "attn, mlp, all, vision"


def targets_key(names: list[str], dtype: str) -> str:
    """A stable key for a set of matrices decomposed at a given precision."""
    payload = "\n".join(sorted(names)) + f"\n@{dtype}"
    return hashlib.sha256(payload.encode()).hexdigest()
