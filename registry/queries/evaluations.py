"""Evaluations: accuracy measurements of a base model, with or without an expert."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import select

from registry.records import EvaluationRecord, NewEvaluation, from_attributes, values_of
from registry.schema import Evaluation

if TYPE_CHECKING:
    from registry.registry import Registry


def _record(row: Evaluation) -> EvaluationRecord:
    return from_attributes(EvaluationRecord, row, config=json.loads(row.config_json or "{}"))


def add(registry: Registry, evaluation: NewEvaluation) -> int:
    """Record one evaluation; returns its id."""
    with registry.session() as session:
        row = Evaluation(**values_of(evaluation, without=("config",)), config_json=json.dumps(evaluation.config))
        session.add(row)
        session.flush()
        return row.id


def of_expert(registry: Registry, expert_id: int) -> list[EvaluationRecord]:
    """The evaluations of an expert, oldest first."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(select(Evaluation).where(Evaluation.expert_id == expert_id).order_by(Evaluation.id))
        return [_record(row) for row in rows]


def of_base_weights(registry: Registry, base_model_id: int, *, task: str, split: str, n: int) -> list[EvaluationRecord]:
    """Evaluations of the base weights (no expert) on this task, split and item count, newest first."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(
            select(Evaluation)
            .where(
                Evaluation.base_model_id == base_model_id,
                Evaluation.expert_id.is_(None),
                Evaluation.task == task,
                Evaluation.split == split,
                Evaluation.n == n,
            )
            .order_by(Evaluation.id.desc())
        )
        return [_record(row) for row in rows]
