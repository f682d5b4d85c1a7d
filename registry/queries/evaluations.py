"""Evaluations: accuracy measurements of a base model, with or without an expert."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from sqlalchemy import select

from registry.records import EvaluationRecord, NewEvaluation
from registry.schema import Evaluation

if TYPE_CHECKING:
    from registry.registry import Registry


def _record(row: Evaluation) -> EvaluationRecord:
    return EvaluationRecord(
        id=row.id,
        base_model_id=row.base_model_id,
        expert_id=row.expert_id,
        task=row.task,
        split=row.split,
        n=row.n,
        correct=row.correct,
        accuracy=row.accuracy,
        ci_low=row.ci_low,
        ci_high=row.ci_high,
        config=json.loads(row.config_json or "{}"),
        seconds=row.seconds,
        created_at=row.created_at,
    )


def add(registry: Registry, evaluation: NewEvaluation) -> int:
    """Record one evaluation; returns its id."""
    with registry.session() as session:
        row = Evaluation(
            base_model_id=evaluation.base_model_id,
            expert_id=evaluation.expert_id,
            task=evaluation.task,
            split=evaluation.split,
            n=evaluation.n,
            correct=evaluation.correct,
            accuracy=evaluation.accuracy,
            ci_low=evaluation.ci_low,
            ci_high=evaluation.ci_high,
            seconds=evaluation.seconds,
            config_json=json.dumps(evaluation.config),
        )
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
