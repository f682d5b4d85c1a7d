"""Read and remove what the registry holds: base models, decompositions, experts.

Plain functions over a ``Registry`` that return dataclasses; the CLI renders them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from registry.queries import base_models, decompositions, experts
from registry.queries import evaluations as evaluation_rows
from registry.records import EvaluationRecord, ExpertRecord
from t2cli.svf.names import expert_not_found

if TYPE_CHECKING:
    from registry import Registry


@dataclass(frozen=True)
class DecompositionInfo:
    id: int
    targets_spec: str
    dtype: str
    method: str
    status: str
    num_matrices: int
    stored_matrices: int
    size_bytes: int
    max_rel_error: float | None
    seconds: float | None


@dataclass(frozen=True)
class BaseModelInfo:
    id: int
    name: str
    source: str
    location: str
    revision: str | None
    fingerprint: str
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    decompositions: list[DecompositionInfo] = field(default_factory=list)
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
class EvaluationInfo:
    """One evaluation of an expert, with the base weights' comparable one (None: not measured)."""

    task: str
    split: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    created_at: str
    base: BaseComparison | None


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


def list_base_models(registry: Registry) -> list[BaseModelInfo]:
    """Every registered base model with its decompositions and expert count."""
    counts = base_models.expert_counts(registry)
    return [
        BaseModelInfo(
            base.id,
            base.name,
            base.source,
            base.location,
            base.revision,
            base.fingerprint,
            base.architecture,
            base.model_type,
            base.num_layers,
            base.hidden_size,
            [
                DecompositionInfo(
                    dec.id,
                    dec.targets_spec,
                    dec.dtype,
                    dec.method,
                    dec.status,
                    dec.num_matrices,
                    dec.stored_matrices,
                    dec.size_bytes,
                    dec.max_rel_error,
                    dec.seconds,
                )
                for dec in decompositions.of_base_model(registry, base.id)
            ],
            counts.get(base.id, 0),
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
        EvaluationInfo(
            task=ev.task,
            split=ev.split,
            n=ev.n,
            correct=ev.correct,
            accuracy=ev.accuracy,
            ci_low=ev.ci_low,
            ci_high=ev.ci_high,
            created_at=str(ev.created_at),
            base=_base_evaluation(registry, expert.base_model_id, ev),
        )
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
