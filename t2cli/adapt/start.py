"""Where CEM starts: the paper's uniform mean, or the learned router's probabilities on the shots.

``t2 adapt --init uniform`` (the default, the paper's start): every weight 1/K.

``t2 adapt --init router [--router NAME]``: the router (``t2 router train``) reads each
few-shot prompt (``item.prompt``, plain text, base weights: what ``t2 eval --strategy
router`` reads), and its class probabilities are averaged over the shots. The mean
probability p_c of each class c is then mapped onto the experts CEM searches:

- a class whose expert is searched gives that expert its weight: alpha_e = p_c;
- ``other`` (the base weights) gives no expert anything: its mass is "less adaptation",
  so the weights sum to 1 - p_other (``base_share``);
- a class whose expert is not among those searched (``--experts`` left it out) is
  treated as ``other``: its mass joins ``base_share`` (recorded in ``unsearched``);
- a searched expert the router does not route to (a mixture, an uncategorised or
  older expert) starts at 0: the router says nothing for it; CEM's ``init_std`` still
  samples it (recorded in ``unrouted``).

With ``--method task-arithmetic`` (z' = 1 + sum_k a_k (z_k - 1)) this start is exactly the
router's own soft mixture (``router-soft``, unrounded, averaged over the shots). With
``linear`` (z' = sum_k a_k z_k) a sum below 1 scales z' towards 0 rather than towards the
base weights (docs/mixing.md). When no searched expert is routed to, the start is all 0:
refused (``UsageError``, exit 2).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from t2cli.errors import UsageError
from t2cli.router.features import prompt_features
from t2cli.router.model import Router, RouterError
from t2cli.router.store import current_router
from t2cli.tasks.dispatch_task import OTHER

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable
    from t2cli.tasks import TaskItem

INITS = ("uniform", "router")
RULE = (
    "alpha of a routed expert = its class's mean probability over the shots; other and classes whose expert "
    "is not searched go to the base weights (sum < 1); searched experts the router does not route to start at 0"
)


@dataclass(frozen=True)
class StartingMean:
    """CEM's starting mean over the searched experts, and where it came from (recorded as ``training.init``)."""

    init: str  # "uniform" | "router"
    experts: tuple[str, ...]  # the searched experts, in CEM's order
    weights: tuple[float, ...]  # the starting mean of each expert's weight
    router: str | None = None
    router_sha256: str | None = None  # the router's router.safetensors
    probabilities: dict[str, float] = field(default_factory=dict)  # class -> mean probability over the shots
    unrouted: tuple[str, ...] = ()  # searched experts no class routes to: start at 0
    unsearched: dict[str, float] = field(default_factory=dict)  # class -> mass whose expert is not searched

    @property
    def base_share(self) -> float:
        """1 - sum of the weights: the base weights' share (``other`` and unsearched classes)."""
        return 1.0 - sum(self.weights)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "init": self.init,
            "experts": list(self.experts),
            "mean": list(self.weights),  # per expert, in that order (per-matrix: the same for every role group)
            "base_share": self.base_share,
        }
        if self.init == "router":
            data |= {
                "router": self.router,
                "router_sha256": self.router_sha256,
                "probabilities": self.probabilities,
                "unrouted": list(self.unrouted),
                "unsearched": self.unsearched,
                "rule": RULE,
            }
        return data


def check_init(init: str, router: str | None) -> None:
    """``--init`` is a known start and ``--router`` is only given with ``--init router`` (else UsageError, exit 2)."""
    if init not in INITS:
        raise UsageError(f"unknown --init {init!r}", f"use one of: {', '.join(INITS)}")
    if router is not None and init != "router":
        raise UsageError(f"--router {router} needs --init router", f"e.g. --init router --router {router}")


def uniform_start(experts: Sequence[str], value: float | None = None) -> StartingMean:
    """The paper's start: every weight 1/K (or ``value``)."""
    weight = 1.0 / len(experts) if value is None else float(value)
    return StartingMean("uniform", tuple(experts), (weight,) * len(experts))


def check_overlap(router: Router, experts: Sequence[str]) -> None:
    """UsageError (exit 2) when the router routes to none of the searched experts: its start would be all 0."""
    routed = [e.expert for e in router.config.experts]
    if not set(routed) & set(experts):
        raise UsageError(
            f"router {router.config.name!r} routes to {', '.join(routed) or 'no expert'}; "
            f"none of them is among the experts to mix ({', '.join(experts)})",
            "add one of the router's experts to --experts, or use --init uniform",
        )


def router_weights(router: Router, probabilities: Sequence[float], experts: Sequence[str]) -> StartingMean:
    """Map mean class probabilities onto the searched ``experts`` by the rule in this module's docstring."""
    check_overlap(router, experts)
    if len(probabilities) != len(router.config.classes):
        raise ValueError(f"{len(probabilities)} probabilities for {len(router.config.classes)} classes")
    weights = dict.fromkeys(experts, 0.0)
    unsearched: dict[str, float] = {}
    for category, p in zip(router.config.classes, probabilities):
        expert = router.config.expert_of(category)
        if expert is not None and expert in weights:
            weights[expert] += float(p)
        elif category != OTHER:
            unsearched[category] = float(p)
    routed = {e.expert for e in router.config.experts}
    return StartingMean(
        "router",
        tuple(experts),
        tuple(weights[e] for e in experts),
        router=router.config.name,
        probabilities={c: float(p) for c, p in zip(router.config.classes, probabilities)},
        unrouted=tuple(e for e in experts if e not in routed),
        unsearched=unsearched,
    )


def mean_probabilities(adaptable: Adaptable, router: Router, prompts: Sequence[str]) -> list[float]:
    """The router's class probabilities of each prompt (base weights, its feature recipe), averaged."""
    recipe = router.config.features
    with adaptable.svf.adapted(None):  # the router was fitted on the base model's states
        features = prompt_features(
            adaptable.model, adaptable.tokenizer, prompts, layers=recipe.layers, pooling=recipe.pooling
        )
    return router.probabilities(features).mean(dim=0).tolist()


def usable_router(
    registry: Registry, name: str | None, base_model_id: int | None, model_name: str, experts: Sequence[str]
) -> tuple[str, Router]:
    """The router ``--init router`` would use, checked (registered, of this model, not stale, overlapping ``experts``).

    Returns its blob sha256 and the router. Runs before the model is loaded, and again in ``adapt``.
    """
    record, router = current_router(registry, name, base_model_id, model_name)
    check_overlap(router, experts)
    return record.blob_sha256, router


def router_start(
    registry: Registry,
    adaptable: Adaptable,
    name: str | None,
    items: Sequence[TaskItem],
    experts: Sequence[str],
) -> StartingMean:
    """CEM's starting mean from the router's probabilities averaged over ``items``' prompts."""
    model_name = adaptable.identity.ref.name or adaptable.identity.ref.location or "the loaded model"
    sha, router = usable_router(registry, name, adaptable.base_model_id, model_name, experts)
    if router.config.base_model.fingerprint not in (None, adaptable.identity.fingerprint):
        raise RouterError(
            f"router {router.config.name!r} was trained on other weights than {model_name}'s",
            f"retrain it with `t2 router train --name {router.config.name} --replace`",
        )
    start = router_weights(router, mean_probabilities(adaptable, router, [item.prompt for item in items]), experts)
    return replace(start, router_sha256=sha)


def start_tensor(start: StartingMean, groups: int | None) -> torch.Tensor:
    """The flat float64 mean CEM searches from: the experts' weights, repeated for each role group (per-matrix)."""
    weights = torch.tensor(start.weights, dtype=torch.float64)
    return weights if groups is None else weights.expand(groups, len(weights)).reshape(-1).clone()
