"""Read and remove what the registry holds: base models, decompositions, experts.

Plain functions over a ``Registry`` that return dataclasses; the CLI renders them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from t2cli.errors import T2Error
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
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


def list_base_models(registry: Registry) -> list[BaseModelInfo]:
    """Every registered base model with its decompositions and expert count."""
    from sqlalchemy import func, select

    from registry.schema import BaseModel, Decomposition, DecompositionMatrix, Expert

    with registry.session() as session:
        infos = []
        for base in session.scalars(select(BaseModel).order_by(BaseModel.id)):
            decompositions = []
            for dec in session.scalars(
                select(Decomposition).where(Decomposition.base_model_id == base.id).order_by(Decomposition.id)
            ):
                stored = session.scalar(
                    select(func.count(DecompositionMatrix.id)).where(DecompositionMatrix.decomposition_id == dec.id)
                )
                decompositions.append(
                    DecompositionInfo(
                        dec.id,
                        dec.targets_spec,
                        dec.dtype,
                        dec.method,
                        dec.status,
                        dec.num_matrices,
                        int(stored or 0),
                        dec.size_bytes or 0,
                        dec.max_rel_error,
                        dec.seconds,
                    )
                )
            experts = session.scalar(select(func.count(Expert.id)).where(Expert.base_model_id == base.id))
            infos.append(
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
                    decompositions,
                    int(experts or 0),
                )
            )
        return infos


def list_experts(registry: Registry) -> list[ExpertInfo]:
    """Every registered expert, oldest first."""
    from sqlalchemy import select

    from registry.schema import Expert

    with registry.session() as session:
        names = list(session.scalars(select(Expert.name).order_by(Expert.id)))
    return [get_expert(registry, name) for name in names]


def get_expert(registry: Registry, name: str) -> ExpertInfo:
    """One expert with its lineage, tags and evaluations."""
    from sqlalchemy import select

    from registry.schema import BaseModel, Evaluation, Expert, ExpertParent, ExpertTag

    with registry.session() as session:
        expert = session.scalars(select(Expert).where(Expert.name == name)).first()
        if expert is None:
            raise expert_not_found(name, list(session.scalars(select(Expert.name).order_by(Expert.name))))
        base = session.get(BaseModel, expert.base_model_id)
        parents = [
            (session.get(Expert, link.parent_id).name, link.weight, link.relation)
            for link in session.scalars(select(ExpertParent).where(ExpertParent.expert_id == expert.id))
        ]
        children = [
            session.get(Expert, link.expert_id).name
            for link in session.scalars(select(ExpertParent).where(ExpertParent.parent_id == expert.id))
        ]
        tags = list(session.scalars(select(ExpertTag.tag).where(ExpertTag.expert_id == expert.id)))
        evaluations = [
            {
                "task": ev.task,
                "split": ev.split,
                "n": ev.n,
                "correct": ev.correct,
                "accuracy": ev.accuracy,
                "ci_low": ev.ci_low,
                "ci_high": ev.ci_high,
                "created_at": str(ev.created_at),
                "base": _base_evaluation(session, expert.base_model_id, ev),
            }
            for ev in session.scalars(select(Evaluation).where(Evaluation.expert_id == expert.id))
        ]
        return ExpertInfo(
            name=expert.name,
            kind=expert.kind,
            base_model=base.name if base else "?",
            task=expert.task,
            category=expert.category,
            description=expert.description,
            blob_sha256=expert.blob_sha256,
            created_at=str(expert.created_at),
            parents=parents,
            children=children,
            tags=tags,
            evaluations=evaluations,
            config=json.loads(expert.config_json or "{}"),
        )


def _base_evaluation(session, base_model_id: int, ev) -> dict[str, Any] | None:
    """The latest evaluation of the base weights on the same task, split and items (n and settings), if any."""
    from sqlalchemy import select

    from registry.schema import Evaluation

    settings = _comparable(ev.config_json)
    rows = session.scalars(
        select(Evaluation)
        .where(
            Evaluation.base_model_id == base_model_id,
            Evaluation.expert_id.is_(None),
            Evaluation.task == ev.task,
            Evaluation.split == ev.split,
            Evaluation.n == ev.n,
        )
        .order_by(Evaluation.id.desc())
    )
    for row in rows:
        if _comparable(row.config_json) == settings and "strategy" not in json.loads(row.config_json or "{}"):
            return {
                "accuracy": row.accuracy,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "correct": row.correct,
                "max_new_tokens": settings[1],
            }
    return None


def _comparable(config_json: str | None) -> tuple:
    """What must match for two evaluations to be compared: the items (limit) and the generation budget."""
    config = json.loads(config_json or "{}")
    return config.get("limit"), config.get("max_new_tokens"), config.get("decoding", "greedy")


def remove_expert(registry: Registry, name: str) -> None:
    """Delete an expert's rows; refused while other experts derive from it. Blobs go with `t2 db gc`."""
    from sqlalchemy import select

    from registry.schema import Expert, ExpertParent

    get_expert(registry, name)  # raises the clear not-found error
    with registry.session() as session:
        expert = session.scalars(select(Expert).where(Expert.name == name)).one()
        children = [
            session.get(Expert, link.expert_id).name
            for link in session.scalars(select(ExpertParent).where(ExpertParent.parent_id == expert.id))
        ]
        if children:
            raise T2Error(
                f"expert {name!r} is a parent of {', '.join(children)}",
                "remove those experts first (lineage must stay complete)",
            )
        session.delete(expert)
