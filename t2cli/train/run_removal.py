"""Removing training runs (``t2 runs rm``) and the run folders nothing refers to (``t2 db gc``).

A run is its registry rows (the run and its per-step metrics) and its checkpoint folder
under ``$T2_HOME/runs/``. Removing it never removes the expert it registered. A run whose
lock is held (``run_lock``) is being trained and is refused; an orphan folder (no run row)
whose lock is held is a run starting right now and is left alone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from registry.queries.run_removal import delete_run_rows, find_run_record, known_run_folders, recent_run_ids
from t2cli.errors import T2Error
from t2cli.svf.names import did_you_mean
from t2cli.train.run_lock import RunBusy, run_in_progress

if TYPE_CHECKING:
    from registry import Registry


@dataclass(frozen=True)
class RemovedRun:
    run_id: str
    status: str
    folder: str | None  # the checkpoint folder removed (None: it had none, or it was already gone)
    metric_rows: int
    expert: str | None  # the expert it registered: kept


def remove_run(registry: Registry, run_id: str, *, dry_run: bool = False) -> RemovedRun:
    """Delete run ``run_id``'s rows and checkpoint folder; ``RunBusy`` while a process trains it."""
    with registry.session(readonly=True) as session:
        record = find_run_record(session, run_id)
        recent = recent_run_ids(session, limit=1000) if record is None else []
    if record is None:
        raise T2Error(
            f"no training run {run_id!r}",
            did_you_mean(run_id, recent) or ("see `t2 runs list`" if recent else "there are no runs"),
        )
    if record.checkpoint_dir and run_in_progress(record.checkpoint_dir):
        raise RunBusy(record.run_id)
    folder = record.checkpoint_dir if record.checkpoint_dir and Path(record.checkpoint_dir).is_dir() else None
    if not dry_run:
        with registry.session() as session:
            delete_run_rows(session, run_id)
        if folder is not None:
            shutil.rmtree(folder)
    return RemovedRun(record.run_id, record.status, folder, record.metric_rows, record.expert)


def orphan_run_folders(registry: Registry) -> list[Path]:
    """Folders under ``$T2_HOME/runs/`` that no run row refers to and no process holds: safe to remove."""
    runs_dir = registry.home / "runs"
    if not runs_dir.is_dir():
        return []
    with registry.session(readonly=True) as session:
        run_ids, folders = known_run_folders(session)
    known = {str(Path(f).resolve()) for f in folders}
    return [
        path
        for path in sorted(runs_dir.iterdir())
        if path.is_dir() and path.name not in run_ids and str(path.resolve()) not in known and not run_in_progress(path)
    ]


def remove_orphan_run_folders(registry: Registry, *, dry_run: bool = False) -> list[Path]:
    """Remove (or, with ``dry_run``, only list) the orphan run folders."""
    orphans = orphan_run_folders(registry)
    if not dry_run:
        for path in orphans:
            shutil.rmtree(path)
    return orphans
