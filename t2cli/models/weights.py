"""Read target weight matrices one at a time, without holding two copies of a model.

``SafetensorsWeights`` reads tensors straight from a folder's safetensors files
(memory stays at about one chunk of matrices, whatever the model size);
``ModuleWeights`` serves them from a model transformers has already loaded,
which is the only way to read a GGUF file (transformers dequantises it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from safetensors import safe_open

from t2cli.errors import ModelLoadError, TargetError

if TYPE_CHECKING:
    import torch
    from torch import nn


class WeightSource(Protocol):
    """Where weight tensors come from."""

    def has(self, name: str) -> bool: ...

    def shape(self, name: str) -> tuple[int, ...]: ...

    def get(self, name: str) -> torch.Tensor: ...


class ModuleWeights:
    """Weights of an already-loaded ``nn.Module``."""

    def __init__(self, model: nn.Module) -> None:
        self._params = dict(model.named_parameters())

    def has(self, name: str) -> bool:
        return name in self._params

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._params[name].shape)

    def get(self, name: str) -> torch.Tensor:
        return self._params[name].detach()


class SafetensorsWeights:
    """Weights read lazily from the safetensors files of a Hugging Face folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelLoadError(f"no .safetensors files in {folder}")
        for file in files:
            try:
                with safe_open(str(file), framework="pt") as handle:
                    for key in handle.keys():
                        self._where[key] = file
                        self._shapes[key] = tuple(handle.get_slice(key).get_shape())
            except Exception as exc:  # safetensors raises its own error type for bad headers
                raise ModelLoadError(
                    f"cannot read {file.name}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                    "the file is truncated or corrupt: re-download or re-copy it",
                ) from exc

    @staticmethod
    def usable(folder: Path) -> bool:
        """True when the folder's weights are all in safetensors files."""
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            try:
                return bool(json.loads(index.read_text()).get("weight_map"))
            except ValueError:
                return False
        return any(folder.glob("*.safetensors"))

    def has(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        """Every tensor name the files hold, as stored (a renamed checkpoint's own names)."""
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def get(self, name: str) -> torch.Tensor:
        try:
            with safe_open(str(self._where[name]), framework="pt") as handle:
                return handle.get_tensor(name)
        except Exception as exc:
            raise ModelLoadError(
                f"cannot read tensor {name} from {self._where[name].name}: {exc}",
                "the file is truncated or corrupt: re-download or re-copy it",
            ) from exc


def check_present(source: WeightSource, weight_names: list[str], model_type: str) -> None:
    """Fail with one line if the model lacks a matrix its architecture should have."""
    missing = [name for name in weight_names if not source.has(name)]
    if missing:
        raise TargetError(
            f"this {model_type} model has no weight {missing[0]!r} ({len(missing)} expected matrices missing)",
            "its layout differs from the standard one: pick targets with a --targets regex",
        )
