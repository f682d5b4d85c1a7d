"""``t2 router train``: label prompts, read their features with the base weights, fit, register.

The features of every prompt come from one prefill of the base model (no expert
applied); fitting the classifier takes seconds. The router records the experts it
routes to (with their file hashes), where its prompts came from, the C chosen and its
validation accuracy, overall and per class.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from t2cli.router.data import PER_CLASS, router_prompts
from t2cli.router.defaults import DEFAULT_POOLING, default_layers
from t2cli.router.features import prompt_features
from t2cli.router.fit import fit_classifier
from t2cli.router.model import FeatureRecipe, Router, RouterConfig, RouterError
from t2cli.router.store import routed_experts
from t2cli.tasks.dispatch_task import OTHER, CategoryExpert, category_experts

if TYPE_CHECKING:
    from registry import Registry
    from t2cli.svf.adaptable import Adaptable


def default_recipe(num_layers: int, pooling: str = DEFAULT_POOLING) -> FeatureRecipe:
    """The feature recipe ``t2 router train`` uses unless told (``t2cli.router.defaults``)."""
    return FeatureRecipe(layers=default_layers(num_layers), pooling=pooling)


Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class TrainedRouter:
    router: Router
    feature_seconds: float
    fit_seconds: float


def select_experts(registry: Registry, base_model_id: int, names: Sequence[str] | None) -> list[CategoryExpert]:
    """The category experts to route to: all of the base model's, or the named ones (one per category)."""
    experts = category_experts(registry, base_model_id)
    if names:
        by_name = {e.expert: e for e in experts}
        unknown = [n for n in names if n not in by_name]
        if unknown:
            known = ", ".join(f"{e.expert} ({e.category})" for e in experts) or "none"
            raise RouterError(
                f"{unknown[0]!r} is not a category expert of this base model (they are: {known})",
                "name experts that carry a category and are the latest of it; mixtures cannot be routed to",
            )
        experts = [by_name[n] for n in names]
    if not experts:
        raise RouterError(
            "the router needs at least one category expert for this base model; found none",
            "train one first, e.g. `t2 train --task arithmetic --name math-v1`",
        )
    return experts


def train_router(
    registry: Registry,
    adaptable: Adaptable,
    *,
    name: str,
    experts: Sequence[CategoryExpert],
    recipe: FeatureRecipe | None = None,
    per_class: dict[str, int] | None = None,
    command: str | None = None,
    progress: Progress | None = None,
    pool: str = "category",
    exclude_tasks: Sequence[str] = (),
) -> TrainedRouter:
    """Build and fit a router for ``experts`` on the loaded base model (not registered: see ``register_router``)."""
    sizes = {**PER_CLASS, **(per_class or {})}
    recipe = recipe or default_recipe(adaptable.identity.num_layers)
    train = router_prompts(experts, "train", per_class=sizes["train"], pool=pool, exclude=exclude_tasks)
    valid = router_prompts(experts, "valid", per_class=sizes["valid"], pool=pool, exclude=exclude_tasks)
    classes = (*sorted(e.category for e in experts), OTHER)
    total = len(train.prompts) + len(valid.prompts)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress("features", done, total)

    started = time.perf_counter()
    with adaptable.svf.adapted(None):  # the base weights read the prompt, as in pass 1
        model, tokenizer = adaptable.model, adaptable.tokenizer
        train_x = prompt_features(
            model, tokenizer, train.prompts, layers=recipe.layers, pooling=recipe.pooling, on_batch=tick
        )
        valid_x = prompt_features(
            model, tokenizer, valid.prompts, layers=recipe.layers, pooling=recipe.pooling, on_batch=tick
        )
    feature_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fitted = fit_classifier(train_x, train.labels, valid_x, valid.labels, classes)
    fit_seconds = time.perf_counter() - started
    config = RouterConfig(
        name=name,
        base_model=adaptable.base_model_record(),
        features=recipe,
        classes=classes,
        experts=routed_experts(registry, list(experts)),
        training={
            "sources": train.sources,
            "task_pool": pool,
            "excluded_tasks": sorted(exclude_tasks),
            "train_prompts": train.counts(),
            "valid_prompts": valid.counts(),
            "c": fitted.c,
            "accuracy_by_c": {str(c): a for c, a in fitted.accuracy_by_c.items()},
            "feature_seconds": round(feature_seconds, 2),
            "fit_seconds": round(fit_seconds, 2),
        },
        valid_accuracy=fitted.valid_accuracy,
        command=command,
    )
    router = Router(config, fitted.mean, fitted.scale, fitted.coef, fitted.intercept)
    per_class_accuracy = _per_class(router, valid_x, valid.labels)
    config.training["valid_accuracy_by_class"] = per_class_accuracy
    return TrainedRouter(router, feature_seconds, fit_seconds)


def _per_class(router: Router, features, labels: Sequence[str]) -> dict[str, float]:
    predicted = router.logits(features).argmax(-1).tolist()
    classes = router.config.classes
    result = {}
    for c in classes:
        rows = [i for i, label in enumerate(labels) if label == c]
        result[c] = sum(classes[predicted[i]] == c for i in rows) / len(rows) if rows else float("nan")
    return result
