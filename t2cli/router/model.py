"""A router: which expert category a prompt belongs to, from the base model's hidden states.

A linear softmax classifier over standardised prompt features (``t2cli.router.features``):
``logits = ((x - mean) / scale) @ coef.T + intercept``. It is fitted by scikit-learn
(``t2cli.router.fit``) but predicts with torch alone, so ``t2 ask`` does not import
scikit-learn. On disk it is two files, as an expert is:

- ``router.safetensors``: ``mean``, ``scale`` [features], ``coef`` [classes, features],
  ``intercept`` [classes], float32;
- ``router_config.json``: ``RouterConfig`` below (the base model, the feature recipe,
  the classes, the experts it routes to, how it was trained, its validation accuracy).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from t2cli import __version__
from t2cli.errors import T2Error
from t2cli.svf.expert import BaseModelRef
from t2cli.tasks.dispatch_task import OTHER

FORMAT = "t2-router"
FORMAT_VERSION = 1
WEIGHTS_FILE = "router.safetensors"
CONFIG_FILE = "router_config.json"
TENSORS = ("mean", "scale", "coef", "intercept")


class RouterError(T2Error):
    """A router that cannot be used: missing, invalid, stale, or made for another model."""


@dataclass(frozen=True)
class RoutedExpert:
    """One class of the router: the category, and the expert that answered it when the router was trained."""

    category: str
    expert: str
    blob_sha256: str  # the expert's file then: a retrained expert of the same name makes the router stale


@dataclass(frozen=True)
class FeatureRecipe:
    """How prompt features are read: which decoder layers, how they are pooled (``prompt_features``)."""

    layers: tuple[int, ...]
    pooling: str = "mean"


@dataclass(frozen=True)
class RouterConfig:
    """``router_config.json``."""

    name: str
    base_model: BaseModelRef
    features: FeatureRecipe
    classes: tuple[str, ...]  # the classifier's outputs, in order; OTHER means the base weights
    experts: tuple[RoutedExpert, ...]
    training: dict[str, Any] = field(default_factory=dict)  # sources, sizes, C, seconds, per-class accuracy
    valid_accuracy: float | None = None
    t2_version: str = __version__
    command: str | None = None  # the command that built it

    def expert_of(self, category: str) -> str | None:
        """The expert a class routes to (None for OTHER)."""
        return next((e.expert for e in self.experts if e.category == category), None)

    def to_json(self) -> str:
        data = asdict(self)
        data["base_model"] = self.base_model.to_dict()
        return json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **data}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, where: str = "router_config.json") -> RouterConfig:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            if int(data.get("format_version", 0)) > FORMAT_VERSION:
                raise RouterError(
                    f"{where} is format version {data['format_version']}; this t2 reads up to {FORMAT_VERSION}",
                    "upgrade t2",
                )
            features = data["features"]
            return cls(
                name=str(data["name"]),
                base_model=BaseModelRef.from_dict(data["base_model"]),
                features=FeatureRecipe(tuple(int(i) for i in features["layers"]), str(features["pooling"])),
                classes=tuple(str(c) for c in data["classes"]),
                experts=tuple(RoutedExpert(**e) for e in data["experts"]),
                training=dict(data.get("training") or {}),
                valid_accuracy=data.get("valid_accuracy"),
                t2_version=str(data.get("t2_version") or "?"),
                command=data.get("command"),
            )
        except RouterError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RouterError(
                f"{where} is not a valid router config: {exc}", "rebuild it with `t2 router train`"
            ) from None


@dataclass
class Router:
    """A loaded router: its config and its classifier tensors."""

    config: RouterConfig
    mean: torch.Tensor
    scale: torch.Tensor
    coef: torch.Tensor
    intercept: torch.Tensor

    def __post_init__(self) -> None:
        classes, width = self.coef.shape if self.coef.ndim == 2 else (-1, -1)
        shapes_ok = (
            classes == len(self.config.classes)
            and self.intercept.shape == (classes,)
            and self.mean.shape == (width,)
            and self.scale.shape == (width,)
        )
        if not shapes_ok:
            raise RouterError(
                f"router {self.config.name!r} has tensors of shapes coef {tuple(self.coef.shape)}, intercept "
                f"{tuple(self.intercept.shape)}, mean {tuple(self.mean.shape)} for {len(self.config.classes)} classes",
                "the file is damaged: rebuild it with `t2 router train`",
            )
        if not all(torch.isfinite(t).all() for t in (self.mean, self.scale, self.coef, self.intercept)):
            raise RouterError(f"router {self.config.name!r} holds NaN or inf", "rebuild it with `t2 router train`")
        if len(set(self.config.classes)) != len(self.config.classes) or OTHER not in self.config.classes:
            raise RouterError(
                f"router {self.config.name!r} has classes {list(self.config.classes)}: they must be distinct and "
                f"include {OTHER!r}",
                "rebuild it with `t2 router train`",
            )

    @property
    def width(self) -> int:
        return int(self.coef.shape[1])

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """[n, classes] logits for [n, width] features."""
        x = (features.float() - self.mean) / self.scale
        return x @ self.coef.T + self.intercept

    def probabilities(self, features: torch.Tensor, *, temperature: float = 1.0) -> torch.Tensor:
        """Class probabilities, softmax(logits / temperature)."""
        return torch.softmax(self.logits(features) / temperature, dim=-1)

    def save(self, folder: Path) -> None:
        """Write ``router.safetensors`` and ``router_config.json`` into ``folder`` (each written, then renamed)."""
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"mean": self.mean, "scale": self.scale, "coef": self.coef, "intercept": self.intercept}
        tmp = folder / (WEIGHTS_FILE + ".tmp")
        save_file({k: v.float().contiguous() for k, v in tensors.items()}, str(tmp), metadata={"format": FORMAT})
        tmp.replace(folder / WEIGHTS_FILE)
        tmp = folder / (CONFIG_FILE + ".tmp")
        tmp.write_text(self.config.to_json() + "\n", encoding="utf-8")
        tmp.replace(folder / CONFIG_FILE)


def read_router(weights: Path, config_text: str, *, where: str) -> Router:
    """A router from its weights file and config text; one clear ``RouterError`` when either is invalid."""
    config = RouterConfig.from_json(config_text, where=where)
    try:
        tensors = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types for a truncated or foreign file
        raise RouterError(f"{where}: cannot read {weights.name}: {exc}", "rebuild it with `t2 router train`") from None
    missing = [name for name in TENSORS if name not in tensors]
    if missing:
        raise RouterError(f"{where}: {weights.name} lacks {', '.join(missing)}", "rebuild it with `t2 router train`")
    return Router(config, *(tensors[name].float() for name in TENSORS))


MIX_STEP = 0.05  # soft weights are rounded to this step: equal mixtures share one composition and one batch


def soft_weights(
    router: Router, probabilities: Sequence[float], *, top_k: int | None = None, step: float = MIX_STEP
) -> dict[str, float]:
    """Mixing weights expert -> alpha from class probabilities (``other`` is the base weights, z = 1).

    With ``top_k`` only the k likeliest classes keep their mass (renormalised to 1).
    Each share is then rounded to a multiple of ``step`` (largest remainders first, so
    the shares still sum to 1); a class rounded to 0 drops out. The weights of the
    experts sum to at most 1: what is missing is the base weights' share, so
    z' = sum_k alpha_k z_k + (1 - sum_k alpha_k) * 1.
    """
    pairs = sorted(zip(router.config.classes, probabilities), key=lambda pair: -pair[1])
    if top_k is not None:
        pairs = pairs[:top_k]
    total = sum(p for _, p in pairs) or 1.0
    shares = _round_to_step([p / total for _, p in pairs], step)
    weights: dict[str, float] = {}
    for (category, _), share in zip(pairs, shares):
        expert = router.config.expert_of(category)
        if expert is not None and share > 0:
            weights[expert] = round(weights.get(expert, 0.0) + share, 6)
    return weights


def _round_to_step(shares: Sequence[float], step: float) -> list[float]:
    """Shares (summing to 1) as multiples of ``step`` summing to 1, by the largest-remainder method."""
    units = round(1 / step)
    scaled = [s * units for s in shares]
    floors = [int(x) for x in scaled]
    order = sorted(range(len(shares)), key=lambda i: -(scaled[i] - floors[i]))
    for i in order[: units - sum(floors)]:
        floors[i] += 1
    return [f / units for f in floors]
