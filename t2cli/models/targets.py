"""Which weight matrices t2 adapts, named explicitly per architecture.

Each supported architecture lists its transformer-block matrices by role; the
user picks ``attn``, ``mlp``, ``all`` or a regular expression over the full
matrix names. Nothing is chosen by substring matching on parameter names, so
embeddings, norms and the LM head can never be picked up by accident.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from t2cli.errors import TargetError, TargetValueError

TARGET_GROUPS = ("attn", "mlp", "all")
DEFAULT_TARGETS = "all"

_LLAMA_LIKE_ROLES: dict[str, str] = {
    "attn.q": "self_attn.q_proj",
    "attn.k": "self_attn.k_proj",
    "attn.v": "self_attn.v_proj",
    "attn.o": "self_attn.o_proj",
    "mlp.gate": "mlp.gate_proj",
    "mlp.up": "mlp.up_proj",
    "mlp.down": "mlp.down_proj",
}


@dataclass(frozen=True)
class ArchitectureLayout:
    """Where the transformer blocks are and which matrices each holds."""

    block_prefix: str  # format string with {layer}
    roles: dict[str, str]  # role -> module path inside a block


# Keyed by config.model_type. Gemma 1-3 and Qwen3 use the same module names as Llama.
LAYOUTS: dict[str, ArchitectureLayout] = {
    model_type: ArchitectureLayout("model.layers.{layer}.", _LLAMA_LIKE_ROLES)
    for model_type in ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "gemma3_text")
}


@dataclass(frozen=True)
class TargetMatrix:
    """One adapted matrix: its module name, block index and role."""

    name: str  # module name, e.g. "model.layers.3.mlp.down_proj"; the weight is name + ".weight"
    layer: int
    role: str  # e.g. "mlp.down"

    @property
    def weight_name(self) -> str:
        return f"{self.name}.weight"


def layout_for(model_type: str) -> ArchitectureLayout:
    """The layout of a supported architecture, or a clear error listing the supported ones."""
    try:
        return LAYOUTS[model_type]
    except KeyError:
        raise TargetError(
            f"architecture {model_type!r} is not supported",
            f"supported: {', '.join(sorted(LAYOUTS))}",
        ) from None


def candidate_matrices(model_type: str, num_layers: int) -> list[TargetMatrix]:
    """Every matrix t2 could adapt in this architecture, in layer then role order."""
    layout = layout_for(model_type)
    return [
        TargetMatrix(layout.block_prefix.format(layer=layer) + module, layer, role)
        for layer in range(num_layers)
        for role, module in layout.roles.items()
    ]


def select_targets(model_type: str, num_layers: int, spec: str = DEFAULT_TARGETS) -> list[TargetMatrix]:
    """Resolve ``attn`` / ``mlp`` / ``all`` or a regex (searched in full matrix names)."""
    candidates = candidate_matrices(model_type, num_layers)
    if spec == "all":
        chosen = candidates
    elif spec in ("attn", "mlp"):
        chosen = [m for m in candidates if m.role.split(".")[0] == spec]
    else:
        try:
            pattern = re.compile(spec)
        except re.error as exc:
            raise TargetValueError(
                f"--targets {spec!r} is not a valid regular expression ({exc})",
                "use attn, mlp, all, or a regex such as 'layers\\.1[0-9]\\.mlp'",
            ) from None
        chosen = [m for m in candidates if pattern.search(m.name)]
    if not chosen:
        example = candidates[0].name if candidates else "model.layers.0.mlp.up_proj"
        raise TargetValueError(
            f"--targets {spec!r} matches no matrix of this {model_type} model",
            f"use attn, mlp, all, or a regex over names like {example!r}",
        )
    return chosen


def targets_key(names: list[str], dtype: str) -> str:
    """A stable key for a set of matrices decomposed at a given precision."""
    payload = "\n".join(sorted(names)) + f"\n@{dtype}"
    return hashlib.sha256(payload.encode()).hexdigest()
