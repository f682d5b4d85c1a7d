"""Removing training runs: find a run's row, delete it with its metrics, list the folders runs own."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from registry.schema import Expert, RunMetric, TrainingRun


@dataclass(frozen=True)
class RunRecord:
    """What removing a run needs to know about it."""

    run_id: str
    status: str  # as recorded: a "running" run may have died (the lock in its folder says)
    checkpoint_dir: str | None
    expert: str | None  # the expert it registered, which removing the run keeps
    metric_rows: int


def find_run_record(session: Session, run_id: str) -> RunRecord | None:
    """The run called ``run_id``; None when there is none."""
    row = session.scalars(select(TrainingRun).where(TrainingRun.run_id == run_id)).first()
    if row is None:
        return None
    expert = session.scalars(select(Expert.name).where(Expert.id == row.expert_id)).first() if row.expert_id else None
    metrics = session.scalar(select(func.count()).select_from(RunMetric).where(RunMetric.run_id == row.id)) or 0
    return RunRecord(row.run_id, row.status, row.checkpoint_dir, expert, metrics)


def delete_run_rows(session: Session, run_id: str) -> RunRecord | None:
    """Delete the run's row and its metric rows (never the expert it registered); what was deleted, or None."""
    record = find_run_record(session, run_id)
    if record is None:
        return None
    run_pk = session.scalars(select(TrainingRun.id).where(TrainingRun.run_id == run_id)).one()
    session.execute(delete(RunMetric).where(RunMetric.run_id == run_pk))
    session.execute(delete(TrainingRun).where(TrainingRun.id == run_pk))
    return record


def recent_run_ids(session: Session, limit: int = 5) -> list[str]:
    """The newest run ids, newest first."""
    return list(session.scalars(select(TrainingRun.run_id).order_by(TrainingRun.id.desc()).limit(limit)))


def known_run_folders(session: Session) -> tuple[set[str], set[str]]:
    """Every run's id and checkpoint folder: a folder under ``runs/`` matching neither is an orphan."""
    rows = session.execute(select(TrainingRun.run_id, TrainingRun.checkpoint_dir)).all()
    return {run_id for run_id, _ in rows}, {folder for _, folder in rows if folder}
