"""Training runs: start, status, metrics, the expert a run produced."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.orm import Session

from registry.records import RunRecord
from registry.schema import Expert, RunMetric, TrainingRun

if TYPE_CHECKING:
    from registry.registry import Registry


def _record(session: Session, row: TrainingRun) -> RunRecord:
    expert = session.get(Expert, row.expert_id) if row.expert_id is not None else None
    return RunRecord(
        id=row.id,
        run_id=row.run_id,
        base_model_id=row.base_model_id,
        expert_id=row.expert_id,
        expert_name=expert.name if expert is not None else None,
        task=row.task,
        status=row.status,
        config_json=row.config_json or "{}",
        checkpoint_dir=row.checkpoint_dir,
        started_at=row.started_at,
        finished_at=row.finished_at,
    )


def get(registry: Registry, run_id: str) -> RunRecord | None:
    """The run called ``run_id``, if any."""
    with registry.session(readonly=True) as session:
        row = session.scalars(select(TrainingRun).where(TrainingRun.run_id == run_id)).first()
        return None if row is None else _record(session, row)


def all_runs(registry: Registry) -> list[RunRecord]:
    """Every run, newest first."""
    with registry.session(readonly=True) as session:
        return [_record(session, row) for row in session.scalars(select(TrainingRun).order_by(TrainingRun.id.desc()))]


def recent_ids(registry: Registry, limit: int = 5) -> list[str]:
    """The run ids of the newest runs."""
    with registry.session(readonly=True) as session:
        return list(session.scalars(select(TrainingRun.run_id).order_by(TrainingRun.id.desc()).limit(limit)))


def unfinished(registry: Registry) -> list[RunRecord]:
    """Runs whose status is not "finished", newest first."""
    with registry.session(readonly=True) as session:
        rows = session.scalars(
            select(TrainingRun).where(TrainingRun.status != "finished").order_by(TrainingRun.id.desc())
        )
        return [_record(session, row) for row in rows]


def start(
    registry: Registry, *, run_id: str, base_model_id: int, task: str, config_json: str, checkpoint_dir: str
) -> None:
    """Record a new run with status "running"."""
    with registry.session() as session:
        session.add(
            TrainingRun(
                run_id=run_id,
                base_model_id=base_model_id,
                task=task,
                status="running",
                config_json=config_json,
                checkpoint_dir=checkpoint_dir,
            )
        )


def set_status(registry: Registry, run_id: str, status: str) -> None:
    """Set a run's status ("running", "failed", "interrupted"); nothing when there is no such run."""
    with registry.session() as session:
        row = session.scalars(select(TrainingRun).where(TrainingRun.run_id == run_id)).first()
        if row is not None:
            row.status = status


def finish(registry: Registry, run_id: str, expert_id: int) -> None:
    """Mark a run "finished", with the expert it produced and the time."""
    with registry.session() as session:
        row = session.scalars(select(TrainingRun).where(TrainingRun.run_id == run_id)).one()
        row.status, row.expert_id, row.finished_at = "finished", expert_id, datetime.now(timezone.utc)


def record_metrics(registry: Registry, run_id: str, step: int, values: Mapping[str, float]) -> None:
    """Store (or overwrite) a run's metric values at ``step``."""
    with registry.session() as session:
        run_pk = session.scalars(select(TrainingRun.id).where(TrainingRun.run_id == run_id)).one()
        for key, value in values.items():
            session.merge(RunMetric(run_id=run_pk, step=step, name=key, value=float(value)))


def metrics(registry: Registry, run_id: str) -> dict[str, dict[int, float]]:
    """A run's metrics: name -> step -> value."""
    out: dict[str, dict[int, float]] = {}
    with registry.session(readonly=True) as session:
        rows = session.scalars(
            select(RunMetric)
            .join(TrainingRun, RunMetric.run_id == TrainingRun.id)
            .where(TrainingRun.run_id == run_id)
            .order_by(RunMetric.step)
        )
        for metric in rows:
            out.setdefault(metric.name, {})[metric.step] = metric.value
    return out
