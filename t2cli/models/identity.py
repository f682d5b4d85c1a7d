"""Who a model is: its config and a fingerprint of its weights, what the registry records.

Experts are tied to the fingerprint, so the same bytes under another path or name are
the same model, and another file under the same name is not.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2cli.errors import ModelLoadError, first_line
from t2cli.models.hashing import HashCache
from t2cli.models.resolve import ModelRef

if TYPE_CHECKING:
    from transformers import PretrainedConfig


@dataclass(frozen=True)
class ModelIdentity:
    """What the registry records about a base model."""

    ref: ModelRef
    fingerprint: str
    architecture: str
    model_type: str
    num_layers: int  # the language model's blocks
    hidden_size: int
    config: dict[str, Any] = field(repr=False)
    vision_layers: int = 0  # a vision-language model's vision tower blocks; 0 for a text model


def read_config(ref: ModelRef) -> PretrainedConfig:
    """The model's transformers config (from config.json or the GGUF metadata)."""
    from transformers import AutoConfig  # noqa: PLC0415 - heavy: transformers (~2 s), only when reading a config

    try:
        if ref.is_gguf:
            return AutoConfig.from_pretrained(ref.path, gguf_file=ref.gguf_file, trust_remote_code=False)
        return AutoConfig.from_pretrained(ref.path, trust_remote_code=False)
    except Exception as exc:  # transformers raises ValueError, OSError, KeyError... for bad files
        raise ModelLoadError(
            f"cannot read the config of {ref.location}: {first_line(exc)}",
            "check that the file is complete and of a supported architecture",
        ) from exc


def weight_files(ref: ModelRef) -> list[Path]:
    """The files whose bytes define the model's weights."""
    if ref.is_gguf:
        return [ref.path / ref.gguf_file]  # type: ignore[operator]
    files = sorted(ref.path.glob("*.safetensors")) or sorted(ref.path.glob("*.bin"))
    if not files:
        raise ModelLoadError(
            f"folder {ref.path} has a config.json but no weight files (*.safetensors)",
            "copy the weights next to config.json",
        )
    return files


def model_identity(ref: ModelRef, hash_cache: HashCache) -> ModelIdentity:
    """Read the config and fingerprint the weights (sha256 over the architecture and file hashes)."""
    config = read_config(ref)
    config_dict = _clean_config(config.to_dict())
    architectures = config_dict.get("architectures") or []
    architecture = architectures[0] if architectures else type(config).__name__.replace("Config", "ForCausalLM")
    # The same bytes read as another architecture are another model, so the class is hashed too.
    digest = hashlib.sha256(f"{config.model_type}:{architecture}\n".encode())
    for file in weight_files(ref):
        digest.update(f"{file.name}:{hash_cache.sha256(file)}\n".encode())
    text_config = getattr(config, "text_config", None) or config
    num_layers, vision_layers = config_depths(config)
    return ModelIdentity(
        ref=ref,
        fingerprint=digest.hexdigest(),
        architecture=architecture,
        model_type=config.model_type,
        num_layers=num_layers,
        hidden_size=int(getattr(text_config, "hidden_size", 0) or 0),
        config=config_dict,
        vision_layers=vision_layers,
    )


def config_depths(config: PretrainedConfig) -> tuple[int, int]:
    """(language model blocks, vision tower blocks; 0 for a text model) from a config, as targets need them."""
    # A vision-language model nests its language model's and vision tower's configs.
    text_config = getattr(config, "text_config", None) or config
    layers = int(getattr(text_config, "num_hidden_layers", 0) or 0)
    return layers, _vision_depth(getattr(config, "vision_config", None))


def stored_config_depths(config: dict[str, Any]) -> tuple[int, int]:
    """``config_depths`` of a config as the registry stores it (``ModelIdentity.config``, plain JSON)."""
    text_config = config.get("text_config") or config
    vision_config = config.get("vision_config") or {}
    layers = int(text_config.get("num_hidden_layers") or 0)
    return layers, int(vision_config.get("num_hidden_layers") or vision_config.get("depth") or 0)


def _vision_depth(vision_config: PretrainedConfig | None) -> int:
    """Blocks in the vision tower: ``num_hidden_layers`` (CLIP, SigLIP, Idefics3) or ``depth`` (Qwen2-VL)."""
    if vision_config is None:
        return 0
    return int(getattr(vision_config, "num_hidden_layers", None) or getattr(vision_config, "depth", None) or 0)


def _clean_config(config: dict[str, Any]) -> dict[str, Any]:
    """Config as plain JSON-able data (drops values JSON cannot hold)."""
    return json.loads(json.dumps(config, default=str, sort_keys=True))
