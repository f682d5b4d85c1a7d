"""Mixing SVF experts: one z' from K experts' z vectors and mixing weights alpha.

Mixing works on the stored *effective* multipliers z (W' = U diag(S * z) Vh), so any
experts of one base model that adapt the same matrices can be mixed, whatever trained
them. A mixing method is a pure function of one matrix's stacked vectors and the
weights, registered by name with ``@mixing_method`` (mergekit ``@merge_method`` style):

    @mixing_method("linear", formula="z' = sum_k a_k z_k")
    def linear(stack: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:  # (K, r), (K,) -> (r,)
        ...

``mix`` applies a method to every matrix, with one weight per expert or one weight per
expert per *group* of matrices (``groups``: matrix name -> row of an alpha of shape
(G, K)); ``role_groups`` groups matrices by role (attn.q ... mlp.down) across layers.
``check_weights`` and ``check_compatible`` turn bad user input into one-line errors;
``mix_experts`` is the engine behind ``t2 mix``. See docs/mixing.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from registry.queries import experts as expert_rows
from t2cli.errors import T2Error, UsageError
from t2cli.models.targets import candidate_matrices
from t2cli.svf.expert import ExpertConfig, load_expert, register_expert
from t2cli.svf.names import check_expert_name

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.expert import BaseModelRef, LoadedExpert

ZVectors = dict[str, torch.Tensor]
MixFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (K, r) stacked z, (K,) alpha -> (r,) z'


class MixingError(T2Error):
    """Experts that cannot be mixed, or mixing weights that make no sense."""


class MixingValueError(MixingError, UsageError):
    """A mixing method or weights outside what is allowed: a value the user typed (exit code 2)."""


@dataclass(frozen=True)
class MixingMethod:
    """A registered mixing method."""

    name: str
    fn: MixFn
    formula: str  # for help text and docs
    allows_negative: bool  # may a weight be < 0?
    description: str


_METHODS: dict[str, MixingMethod] = {}


def mixing_method(name: str, *, formula: str, allows_negative: bool = False) -> Callable[[MixFn], MixFn]:
    """Register ``fn(stack (K, r), alpha (K,)) -> z' (r,)`` as mixing method ``name``."""

    def register(fn: MixFn) -> MixFn:
        if name in _METHODS:
            raise ValueError(f"mixing method {name!r} is already registered")
        doc = (fn.__doc__ or "").strip().splitlines()
        _METHODS[name] = MixingMethod(name, fn, formula, allows_negative, doc[0] if doc else "")
        return fn

    return register


def mixing_methods() -> list[MixingMethod]:
    """The registered methods, sorted by name."""
    return [_METHODS[name] for name in sorted(_METHODS)]


def get_mixing_method(name: str) -> MixingMethod:
    """The method called ``name``; a MixingError listing the valid names otherwise."""
    try:
        return _METHODS[name]
    except KeyError:
        raise MixingValueError(
            f"unknown mixing method {name!r}", f"use one of: {', '.join(sorted(_METHODS))}"
        ) from None


@mixing_method("linear", formula="z' = sum_k a_k z_k")
def linear(stack: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Weighted sum of the experts' z (the paper's few-shot mixture); weights must be >= 0."""
    return torch.einsum("k,kr->r", alpha.to(stack.dtype), stack)


@mixing_method("task-arithmetic", formula="z' = 1 + sum_k a_k (z_k - 1)", allows_negative=True)
def task_arithmetic(stack: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Add the experts' changes to the identity z = 1; a negative weight subtracts an expert's change."""
    return 1.0 + torch.einsum("k,kr->r", alpha.to(stack.dtype), stack - 1.0)


# --------------------------------------------------------------------------- pure mixing


def stack_experts(zs: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Matrix name -> (K, r) tensor of the K experts' vectors (float32; names and lengths must agree)."""
    names = sorted(zs[0])
    return {name: torch.stack([z[name].to(torch.float32) for z in zs]) for name in names}


def mix_stacked(
    stacks: Mapping[str, torch.Tensor],
    alpha: torch.Tensor,
    method: str = "linear",
    *,
    groups: Mapping[str, int] | None = None,
) -> ZVectors:
    """Apply ``method`` to every matrix of ``stacks``.

    ``alpha`` is (K,) (one weight per expert) or, with ``groups``, (G, K): matrix
    ``name`` uses row ``groups[name]``.
    """
    fn = get_mixing_method(method).fn
    alpha = torch.as_tensor(alpha)
    if groups is None:
        if alpha.ndim != 1:
            raise ValueError(f"alpha has shape {tuple(alpha.shape)}; without groups it must be (K,)")
        return {name: fn(stack, alpha.to(stack.device)) for name, stack in stacks.items()}
    if alpha.ndim != 2:
        raise ValueError(f"alpha has shape {tuple(alpha.shape)}; with groups it must be (G, K)")
    return {name: fn(stack, alpha[groups[name]].to(stack.device)) for name, stack in stacks.items()}


def mix(
    zs: Sequence[Mapping[str, torch.Tensor]],
    alpha: torch.Tensor | Sequence[float],
    method: str = "linear",
    *,
    groups: Mapping[str, int] | None = None,
) -> ZVectors:
    """z' for every matrix from K experts' z (dicts with the same keys and lengths) and weights alpha."""
    return mix_stacked(stack_experts(zs), torch.as_tensor(alpha, dtype=torch.float64), method, groups=groups)


def role_groups(matrix_names: Sequence[str], model_type: str, num_layers: int) -> tuple[list[str], dict[str, int]]:
    """Group matrices by their role in the block (attn.q, ..., mlp.down), all layers together.

    Returns (group names in layout order, matrix name -> group index). Roles come from
    the architecture's layout in ``t2cli.models.targets``, never from substrings of names.
    """
    role_of = {m.name: m.role for m in candidate_matrices(model_type, num_layers)}
    unknown = [name for name in matrix_names if name not in role_of]
    if unknown:
        raise MixingError(
            f"matrix {unknown[0]!r} is not part of the {model_type} layout", "the experts belong to another model"
        )
    order = list(dict.fromkeys(role_of[m] for m in role_of if m in set(matrix_names)))
    return order, {name: order.index(role_of[name]) for name in matrix_names}


# --------------------------------------------------------------------------- validation


def check_weights(method: str, weights: Sequence[float], experts: Sequence[str]) -> MixingMethod:
    """Refuse weights that do not fit the experts or the method; returns the method."""
    spec = get_mixing_method(method)
    if len(weights) != len(experts):
        raise UsageError(
            f"{len(weights)} weights for {len(experts)} experts ({', '.join(experts)})",
            f"give one weight per expert, e.g. --weights {','.join(['0.5'] * len(experts))}",
        )
    for expert, weight in zip(experts, weights):
        if not math.isfinite(weight):
            raise MixingValueError(f"the weight of {expert!r} is {weight}", "weights must be finite numbers")
        if weight < 0 and not spec.allows_negative:
            allowing = [m.name for m in mixing_methods() if m.allows_negative]
            raise MixingValueError(
                f"the weight of {expert!r} is {weight:g}; method {method!r} needs weights >= 0",
                f"use --method {allowing[0]} to subtract an expert" if allowing else "use weights >= 0",
            )
    if all(weight == 0 for weight in weights):
        raise MixingValueError("every mixing weight is 0", "give at least one expert a non-zero weight")
    return spec


def check_compatible(experts: Sequence[LoadedExpert]) -> None:
    """Refuse experts of different base models or with different matrices / vector lengths."""
    if len(experts) < 2:
        raise UsageError(f"mixing needs at least two experts, got {len(experts)}", "name two or more experts")
    names = [e.name for e in experts]
    duplicate = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if duplicate is not None:
        raise UsageError(f"expert {duplicate!r} is named twice", "name each expert once and adjust its weight instead")
    first = experts[0]
    base = first.config.base_model
    for other in experts[1:]:
        theirs = other.config.base_model
        if theirs.fingerprint != base.fingerprint:
            raise MixingError(
                f"expert {other.name!r} belongs to base model {theirs.name} "
                f"(fingerprint {str(theirs.fingerprint)[:12]}), {first.name!r} to {base.name} "
                f"(fingerprint {str(base.fingerprint)[:12]})",
                "only experts of the same base model can be mixed (see `t2 experts list`)",
            )
        missing = sorted(set(first.z) ^ set(other.z))
        if missing:
            raise MixingError(
                f"experts {first.name!r} (targets {first.config.targets!r}, {len(first.z)} matrices) and "
                f"{other.name!r} (targets {other.config.targets!r}, {len(other.z)} matrices) adapt different "
                f"matrices, e.g. {missing[0]}",
                "mix experts trained with the same --targets",
            )
        for matrix in sorted(first.z):
            if first.z[matrix].shape != other.z[matrix].shape:
                raise MixingError(
                    f"z for {matrix} has length {first.z[matrix].shape[0]} in {first.name!r} but "
                    f"{other.z[matrix].shape[0]} in {other.name!r}",
                    "the experts were made from different decompositions; mix experts of one model",
                )


def check_finite(z: Mapping[str, torch.Tensor]) -> None:
    """Refuse a mixed z holding NaN or inf (it would make non-finite weights)."""
    for name, vector in z.items():
        if not torch.isfinite(vector).all():
            raise MixingError(f"the mixed z for {name} holds NaN or inf", "use smaller weights")


# --------------------------------------------------------------------------- registering mixtures


def mixture_config(
    name: str,
    experts: Sequence[LoadedExpert],
    alpha: torch.Tensor,
    method: str,
    *,
    adaptation: str,
    groups: Sequence[str] | None = None,
    base_model: BaseModelRef | None = None,
    task: str | None = None,
    category: str | None = None,
    description: str | None = None,
    metrics: dict[str, Any] | None = None,
    training: dict[str, Any] | None = None,
) -> ExpertConfig:
    """The ExpertConfig of a mixture: kind "mixture", parents "mixed" with their weights.

    ``parametrization`` records ``adaptation`` ("manual" for ``t2 mix``, "cem" for
    ``t2 adapt``) and a ``mixture`` dict: method, formula, experts, granularity and
    alphas (a list of K weights, or G lists of K weights for per-role mixing). A
    parent's ``weight`` is its alpha, or its mean alpha over the groups.
    """
    spec = get_mixing_method(method)
    alpha = torch.as_tensor(alpha, dtype=torch.float64)
    per_expert = alpha if alpha.ndim == 1 else alpha.mean(dim=0)
    mixture: dict[str, Any] = {
        "method": method,
        "formula": spec.formula,
        "experts": [e.name for e in experts],
        "granularity": "expert" if groups is None else "role",
        "alphas": [round(float(a), 6) for a in alpha]
        if alpha.ndim == 1
        else [[round(float(a), 6) for a in row] for row in alpha],
    }
    if groups is not None:
        mixture["groups"] = list(groups)
    tasks = {e.config.task for e in experts}
    categories = {e.config.category for e in experts}
    first = experts[0].config
    return ExpertConfig(
        name=name,
        base_model=base_model or first.base_model,
        targets=first.targets,
        num_matrices=len(experts[0].z),
        kind="mixture",
        task=task if task is not None else (tasks.pop() if len(tasks) == 1 else None),
        category=category if category is not None else (categories.pop() if len(categories) == 1 else None),
        description=description,
        parametrization={"stored": "effective_multiplier", "adaptation": adaptation, "mixture": mixture},
        metrics=dict(metrics or {}),
        training=dict(training or {}),
        parents=[
            {"name": e.name, "weight": round(float(w), 6), "relation": "mixed"} for e, w in zip(experts, per_expert)
        ],
    )


def free_name(registry: Registry, stem: str) -> str:
    """``stem``, or ``stem-2``, ``stem-3``... whichever is not an expert yet (for default names)."""
    taken = expert_rows.names_starting_with(registry, stem)
    if stem not in taken:
        return stem
    n = 2
    while f"{stem}-{n}" in taken:
        n += 1
    return f"{stem}-{n}"


def check_name_free(registry: Registry, name: str) -> None:
    """Refuse an expert name that breaks the name rule or is taken, before any work is done."""
    check_expert_name(name)
    if expert_rows.exists(registry, name):
        raise MixingError(f"an expert named {name!r} already exists", "pick another --name or `t2 experts rm` it")


@dataclass(frozen=True)
class MixResult:
    """What ``t2 mix`` registered."""

    name: str
    method: str
    formula: str
    experts: list[str]
    weights: list[float]
    num_matrices: int
    base_model: str


def mix_experts(
    registry: Registry,
    names: Sequence[str],
    weights: Sequence[float] | None = None,
    *,
    method: str = "linear",
    name: str | None = None,
) -> MixResult:
    """Mix registered experts' z with ``method`` and register the result as a "mixture" expert.

    ``weights`` default to 1/K each. Everything is checked before anything is written.
    """
    names = list(names)
    get_mixing_method(method)
    if len(names) < 2:
        raise UsageError(f"mixing needs at least two experts, got {len(names)}", "e.g. t2 mix math-v1 code-v1")
    weights = [1.0 / len(names)] * len(names) if weights is None else [float(w) for w in weights]
    spec = check_weights(method, weights, names)
    if name is not None:
        check_name_free(registry, name)
    experts = [load_expert(registry, n) for n in names]
    check_compatible(experts)
    z = mix([e.z for e in experts], weights, method)
    check_finite(z)
    name = name or free_name(registry, "mix-" + "-".join(names))
    shown = ", ".join(f"{n} ({w:g})" for n, w in zip(names, weights))
    config = mixture_config(
        name,
        experts,
        torch.tensor(weights, dtype=torch.float64),
        method,
        adaptation="manual",
        description=f"{method} mixture of {shown}",
    )
    register_expert(
        registry, z, config, base_model_id=experts[0].base_model_id, decomposition_id=experts[0].decomposition_id
    )
    return MixResult(name, method, spec.formula, names, weights, len(z), str(config.base_model.name))
