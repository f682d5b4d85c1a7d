"""Read and remove what the registry holds: base models, decompositions, experts.

Plain functions over a ``Registry`` that return dataclasses; the CLI renders them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from registry.queries import base_models, decompositions, experts
from registry.queries import evaluations as evaluation_rows
from registry.records import BaseModelRecord, DecompositionRecord, EvaluationRecord, ExpertRecord, from_attributes
from t2cli.svf.names import expert_not_found

if TYPE_CHECKING:
    from registry import Registry


@dataclass(frozen=True)
class BaseModelInfo(BaseModelRecord):
    """A registered base model with its decompositions and how many experts it has."""

    decompositions: list[DecompositionRecord] = field(default_factory=list)
    num_experts: int = 0


@dataclass(frozen=True)
class BaseComparison:
    """The base weights' accuracy on the same task, split, items and generation budget as an expert's evaluation."""

    accuracy: float
    ci_low: float
    ci_high: float
    correct: int
    max_new_tokens: int | None


@dataclass(frozen=True)
class EvaluationInfo(EvaluationRecord):
    """One evaluation of an expert, with the base weights' comparable one (None: not measured)."""

    base: BaseComparison | None = None


@dataclass(frozen=True)
class ExpertInfo:
    name: str
    kind: str
    base_model: str
    task: str | None
    category: str | None
    description: str | None
    blob_sha256: str
    created_at: str
    parents: list[tuple[str, float | None, str]] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    evaluations: list[EvaluationInfo] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


# What --json leaves out of these values: ids and keys of the registry's own, a base model's config.json
# (`t2 models show` prints what matters of it), an evaluation's settings and time.
_NOT_IN_JSON: dict[type, frozenset[str]] = {
    BaseModelInfo: frozenset({"config"}),
    DecompositionRecord: frozenset({"base_model_id", "targets_key"}),
    EvaluationInfo: frozenset({"id", "base_model_id", "expert_id", "config", "seconds"}),
}


def for_json(value: Any) -> Any:
    """``asdict`` of a catalog value (a base model, an expert) for ``--json``, less the fields of ``_NOT_IN_JSON``."""
    if is_dataclass(value) and not isinstance(value, type):
        hidden = _NOT_IN_JSON.get(type(value), frozenset())
        return {f.name: for_json(getattr(value, f.name)) for f in fields(value) if f.name not in hidden}
    if isinstance(value, list | tuple):
        return [for_json(item) for item in value]
    if isinstance(value, dict):
        return {key: for_json(item) for key, item in value.items()}
    if isinstance(value, datetime):
        return str(value)
    return value


def list_base_models(registry: Registry) -> list[BaseModelInfo]:
    """Every registered base model with its decompositions and expert count."""
    counts = base_models.expert_counts(registry)
    return [
        from_attributes(
            BaseModelInfo,
            base,
            decompositions=decompositions.of_base_model(registry, base.id),
            num_experts=counts.get(base.id, 0),
        )
        for base in base_models.all_base_models(registry)
    ]


def list_experts(registry: Registry) -> list[ExpertInfo]:
    """Every registered expert, oldest first."""
    return [_info(registry, record) for record in experts.all_experts(registry)]


def find_expert(registry: Registry, name: str) -> ExpertRecord:
    """The registry record of expert ``name``; ``ExpertNotFound`` listing known names otherwise."""
    record = experts.get(registry, name)
    if record is None:
        raise expert_not_found(name, experts.names(registry))
    return record


def get_expert(registry: Registry, name: str) -> ExpertInfo:
    """One expert with its lineage, tags and evaluations."""
    return _info(registry, find_expert(registry, name))


def _info(registry: Registry, expert: ExpertRecord) -> ExpertInfo:
    evaluations = [
        from_attributes(EvaluationInfo, ev, base=_base_evaluation(registry, expert.base_model_id, ev))
        for ev in evaluation_rows.of_expert(registry, expert.id)
    ]
    return ExpertInfo(
        name=expert.name,
        kind=expert.kind,
        base_model=expert.base_model_name,
        task=expert.task,
        category=expert.category,
        description=expert.description,
        blob_sha256=expert.blob_sha256,
        created_at=str(expert.created_at),
        parents=[(p.name, p.weight, p.relation) for p in experts.parents(registry, expert.id)],
        children=experts.children(registry, expert.id),
        tags=experts.tags(registry, expert.id),
        evaluations=evaluations,
        config=json.loads(expert.config_json or "{}"),
    )


def _base_evaluation(registry: Registry, base_model_id: int, ev: EvaluationRecord) -> BaseComparison | None:
    """The latest evaluation of the base weights on the same task, split and items (n and settings), if any."""
    settings = _comparable(ev.config)
    for row in evaluation_rows.of_base_weights(registry, base_model_id, task=ev.task, split=ev.split, n=ev.n):
        if _comparable(row.config) == settings and "strategy" not in row.config:
            return BaseComparison(row.accuracy, row.ci_low, row.ci_high, row.correct, settings[1])
    return None


def _comparable(config: dict[str, Any]) -> tuple:
    """What must match for two evaluations to be compared: the items (limit) and the generation budget."""
    return config.get("limit"), config.get("max_new_tokens"), config.get("decoding", "greedy")


def remove_expert(registry: Registry, name: str) -> None:
    """Delete an expert's rows; refused while other experts derive from it. Blobs go with `t2 db gc`."""
    find_expert(registry, name)  # raises the clear not-found error
    experts.remove(registry, name)
