"""Singular Value Fine-tuning: adapt a loaded model with one multiplier vector z per matrix.

W' = U diag(S * z) Vh, computed as W' = W + U diag(S * (z - 1)) Vh with the delta in
float32, so z = 1 gives W back exactly whatever the model's dtype (docs/method.md §1).

``SVFModel`` keeps the factors in memory on the model's device and the base weight
tensors untouched: applying an expert rebinds each target parameter to a composed
tensor, restoring rebinds it to the original tensor (bit for bit, no arithmetic),
and composed weights are cached per expert so switching back and forth costs no
recomposition and no disk read.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.func import functional_call

from t2cli.errors import T2Error

ZVectors = dict[str, torch.Tensor]  # matrix name ("model.layers.3.mlp.down_proj") -> z, shape (r,)


class SVFError(T2Error):
    """An expert that does not fit the model, or weights that came out non-finite."""


class SVFLike(Protocol):
    """What both layouts of an adaptable model offer: ``SVFModel`` (replicated) and ``ShardedSVF`` (FSDP).

    Code that works with either (validation, ``Adaptable[SVFLike]``) uses only this;
    the rest of each class's API belongs to its layout.
    """

    model: nn.Module

    def trainable_z(self) -> ZVectors: ...

    def restore(self) -> None: ...

    def adapted(
        self, z: Mapping[str, torch.Tensor] | None, *, key: str | None = None
    ) -> AbstractContextManager[None]: ...


@dataclass(frozen=True)
class Factors:
    """The reduced SVD of one weight matrix, float32, on the model's device."""

    U: torch.Tensor  # (m, r)
    S: torch.Tensor  # (r,)
    Vh: torch.Tensor  # (r, n)

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])


def compose_delta(factors: Factors, z: torch.Tensor) -> torch.Tensor:
    """U diag(S * (z - 1)) Vh in float32: the change z makes to W (zero where z = 1)."""
    scale = factors.S * (z.to(factors.S.dtype) - 1.0)
    return (factors.U * scale) @ factors.Vh


def compose_weight(base: torch.Tensor, factors: Factors, z: torch.Tensor) -> torch.Tensor:
    """W' = W + delta, summed in float32 and cast back to W's dtype."""
    return (base.to(torch.float32) + compose_delta(factors, z)).to(base.dtype)


class SVFModel:
    """A causal LM plus the SVD factors of its target matrices, ready to be adapted."""

    def __init__(
        self, model: nn.Module, factors: Mapping[str, Factors], *, cache_size: int = 4, cache_bytes: int | None = None
    ) -> None:
        self.model = model
        # Only z is ever trained: the base weights never need gradients (nor their memory).
        model.requires_grad_(False)
        self.factors = dict(factors)
        modules = dict(model.named_modules())
        self._params: dict[str, nn.Parameter] = {}
        for name in self.factors:
            module = modules.get(name)
            if module is None or not isinstance(getattr(module, "weight", None), torch.Tensor):
                raise SVFError(f"the model has no matrix {name!r}", "the decomposition belongs to another model")
            weight = module.weight
            f = self.factors[name]
            if tuple(weight.shape) != (f.U.shape[0], f.Vh.shape[1]):
                raise SVFError(
                    f"matrix {name} is {tuple(weight.shape)} but its factors are {(f.U.shape[0], f.Vh.shape[1])}",
                    "the decomposition belongs to another model",
                )
            self._params[name] = weight
        # The original tensors, never written to: restore rebinds to them.
        self._base: dict[str, torch.Tensor] = {name: p.data for name, p in self._params.items()}
        self._cache: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_bytes = cache_bytes
        self.cache_hits = 0
        self.cache_misses = 0
        self.active: str | None = None

    # ------------------------------------------------------------------ checks

    def check_z(self, z: Mapping[str, torch.Tensor]) -> None:
        """Fail with one line if z does not match the targets (names, lengths, finiteness)."""
        unknown = sorted(set(z) - set(self.factors))
        if unknown:
            raise SVFError(
                f"expert adapts {unknown[0]!r} ({len(unknown)} matrices) that this model's decomposition lacks",
                "decompose the model with the expert's targets (t2 decompose --targets ...)",
            )
        for name, vector in z.items():
            rank = self.factors[name].rank
            if vector.ndim != 1 or vector.shape[0] != rank:
                raise SVFError(
                    f"z for {name} has shape {tuple(vector.shape)}, expected ({rank},)",
                    "the expert was made for a model with other shapes: use `t2 transfer`",
                )
            if not torch.isfinite(vector).all():
                raise SVFError(f"z for {name} holds NaN or inf", "the expert file is damaged")

    # ------------------------------------------------------------------ apply / restore

    @torch.no_grad()
    def composed(self, z: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W' for every matrix z names (others keep W); checked finite before anyone uses them."""
        self.check_z(z)
        weights = {}
        for name, vector in z.items():
            weight = compose_weight(self._base[name], self.factors[name], vector.to(self.factors[name].S.device))
            if not torch.isfinite(weight).all():
                raise SVFError(f"adapting {name} gives non-finite weights", "the expert's z values are too large")
            weights[name] = weight
        return weights

    @torch.no_grad()
    def apply(self, z: Mapping[str, torch.Tensor], *, key: str | None = None) -> None:
        """Adapt the model in place; ``key`` (an expert name) caches the composed weights for reuse."""
        weights = self.composed(z) if key is None else self._composed_cached(z, key)
        self._bind(weights, key or "<unnamed>")

    def _composed_cached(self, z: Mapping[str, torch.Tensor], key: str) -> dict[str, torch.Tensor]:
        """W' for ``key`` from the LRU cache, else composed from z and cached (the oldest entries go)."""
        if key in self._cache:
            self._cache.move_to_end(key)
            self.cache_hits += 1
            return self._cache[key]
        self.cache_misses += 1
        weights = self.composed(z)
        if self._cache_size > 0:
            self._cache[key] = weights
            self._evict()
        return weights

    def set_cache_limits(self, *, entries: int | None = None, nbytes: int | None = None) -> None:
        """Bound the composed-weight cache by a number of entries and/or bytes (None: leave that bound as is)."""
        if entries is not None:
            self._cache_size = entries
        if nbytes is not None:
            self._cache_bytes = nbytes
        self._evict()

    def _evict(self) -> None:
        """Drop the least recently used entries until both bounds hold (an entry larger than the byte bound goes too)."""
        while self._cache and (
            len(self._cache) > self._cache_size
            or (self._cache_bytes is not None and self.cache_nbytes() > self._cache_bytes)
        ):
            self._cache.popitem(last=False)

    def cache_nbytes(self) -> int:
        """Bytes held by the composed weights in the cache."""
        return sum(t.numel() * t.element_size() for weights in self._cache.values() for t in weights.values())

    def cache_entries(self) -> int:
        """How many composed weight sets the cache holds."""
        return len(self._cache)

    @torch.no_grad()
    def apply_mixture(self, parts: Mapping[str, tuple[float, Mapping[str, torch.Tensor]]], *, label: str) -> None:
        """Adapt the model to z' = sum_k alpha_k z_k + (1 - sum_k alpha_k) * 1 without an SVD product.

        ``parts`` maps each expert's cache key to (alpha, its z); z may be empty when the key is
        cached. W'(z) = W + U diag(S (z - 1)) Vh is affine in z, so
        W'(z') = (1 - sum_k alpha_k) W + sum_k alpha_k W'_k, from the experts' composed W'_k
        (cached under their keys, composed first if needed): K + 1 scaled additions per
        matrix instead of a rank-r product, which makes a new mixture per prompt cheap.
        """
        composed = {key: self._composed_cached(z, key) for key, (_, z) in parts.items()}
        base_share = 1.0 - sum(alpha for alpha, _ in parts.values())
        weights = {}
        for name in sorted(set().union(*(w.keys() for w in composed.values()))):
            base = self._base[name]
            mixed = base.to(torch.float32) * base_share
            for key, (alpha, _) in parts.items():
                mixed.add_(composed[key].get(name, base).to(torch.float32), alpha=alpha)
            if not torch.isfinite(mixed).all():
                raise SVFError(f"adapting {name} gives non-finite weights", "the experts' z values are too large")
            weights[name] = mixed.to(base.dtype)
        self._bind(weights, label)

    @torch.no_grad()
    def apply_weights(self, weights: Mapping[str, torch.Tensor]) -> None:
        """Adapt the model with already composed W' tensors (checked finite, then bound in place)."""
        for name, weight in weights.items():
            if name not in self._params or weight.shape != self._params[name].shape:
                raise SVFError(f"no target matrix {name!r} of shape {tuple(weight.shape)}")
            if not torch.isfinite(weight).all():
                raise SVFError(f"adapting {name} gives non-finite weights", "the expert's z values are too large")
        self._bind({name: w.detach() for name, w in weights.items()}, "<composed>")

    def _bind(self, weights: Mapping[str, torch.Tensor], label: str) -> None:
        self.restore()
        for name, weight in weights.items():
            self._params[name].data = weight
        self.active = label

    @torch.no_grad()
    def restore(self) -> None:
        """Give every target matrix its original tensor back (bit-exact: nothing is recomputed)."""
        for name, param in self._params.items():
            param.data = self._base[name]
        self.active = None

    def is_cached(self, key: str) -> bool:
        """Whether ``apply(..., key=key)`` would reuse composed weights (no composition, z not needed)."""
        return key in self._cache

    def forget(self, key: str) -> None:
        """Drop an expert's composed weights from the cache (after it changed)."""
        self._cache.pop(key, None)

    @contextmanager
    def adapted(self, z: Mapping[str, torch.Tensor] | None, *, key: str | None = None) -> Iterator[None]:
        """Run a block with z applied (None: base weights); the base weights are back afterwards."""
        if z is None:
            self.restore()
        else:
            self.apply(z, key=key)
        try:
            yield
        finally:
            self.restore()

    # ------------------------------------------------------------------ training

    def trainable_z(self) -> ZVectors:
        """z = 1 for every matrix (float32, on the factors' device), requiring gradients."""
        return {name: torch.ones_like(f.S, requires_grad=True) for name, f in self.factors.items()}

    def differentiable_weights(self, z: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """W'(z) as graph nodes keyed by matrix name: only z carries gradients (U, S, Vh, W are constants)."""
        return {name: compose_weight(self._base[name], self.factors[name], vector) for name, vector in z.items()}

    def forward_with(self, weights: Mapping[str, torch.Tensor], **inputs: torch.Tensor):
        """Model forward with the given W' tensors (keyed by matrix name) in place of the target weights."""
        params = {f"{name}.weight": weight for name, weight in weights.items()}
        return functional_call(self.model, params, args=(), kwargs=inputs, strict=False)


def load_svf_model(
    model: nn.Module, raw_factors: Mapping[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
) -> SVFModel:
    """Wrap a loaded model with factors read from the registry, moved to the model's device."""
    device = next(model.parameters()).device
    factors = {
        name: Factors(U.to(device, torch.float32), S.to(device, torch.float32), Vh.to(device, torch.float32))
        for name, (U, S, Vh) in raw_factors.items()
    }
    return SVFModel(model, factors)
