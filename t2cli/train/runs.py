"""Training runs as recorded in the registry, and their learning curves."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from t2cli.errors import T2Error
from t2cli.train.run_lock import run_in_progress

if TYPE_CHECKING:
    from registry import Registry


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    task: str
    status: str
    expert: str | None
    started_at: str
    finished_at: str | None
    config: dict[str, Any]
    metrics: dict[str, dict[int, float]] = field(default_factory=dict)  # name -> step -> value


def list_runs(registry: Registry) -> list[RunInfo]:
    """Every training run, newest first (without per-step metrics)."""
    from sqlalchemy import select

    from registry.schema import TrainingRun

    with registry.session(readonly=True) as session:
        ids = list(session.scalars(select(TrainingRun.run_id).order_by(TrainingRun.id.desc())))
    return [get_run(registry, run_id, with_metrics=False) for run_id in ids]


def get_run(registry: Registry, run_id: str, *, with_metrics: bool = True) -> RunInfo:
    """One run with its per-step metrics."""
    from sqlalchemy import select

    from registry.schema import Expert, RunMetric, TrainingRun

    with registry.session(readonly=True) as session:
        row = session.scalars(select(TrainingRun).where(TrainingRun.run_id == run_id)).first()
        if row is None:
            recent = list(session.scalars(select(TrainingRun.run_id).order_by(TrainingRun.id.desc()).limit(5)))
            raise T2Error(
                f"no training run {run_id!r}",
                f"recent runs: {', '.join(recent)}" if recent else "train one with `t2 train`",
            )
        expert = session.get(Expert, row.expert_id).name if row.expert_id else None
        metrics: dict[str, dict[int, float]] = {}
        if with_metrics:
            for metric in session.scalars(select(RunMetric).where(RunMetric.run_id == row.id).order_by(RunMetric.step)):
                metrics.setdefault(metric.name, {})[metric.step] = metric.value
        status = row.status
        if status == "running" and not run_in_progress(row.checkpoint_dir):
            status = "interrupted"  # its process died without saying so (kill -9, power loss)
        return RunInfo(
            run_id=row.run_id,
            task=row.task,
            status=status,
            expert=expert,
            started_at=str(row.started_at),
            finished_at=str(row.finished_at) if row.finished_at else None,
            config=json.loads(row.config_json),
            metrics=metrics,
        )


def plot_learning_curve(run: RunInfo, path: Path, *, base_valid: float | None = None) -> Path:
    """Reward (mean over rollouts) and validation accuracy against step, as a PNG (atomic write)."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    reward = run.metrics.get("reward", {})
    valid = dict(run.metrics.get("valid_accuracy", {}))
    if base_valid is not None:
        valid.setdefault(0, base_valid)
    if not reward and not valid:
        raise T2Error(f"run {run.run_id} has no metrics yet", "wait for its first step")
    fig, ax_reward = plt.subplots(figsize=(7, 4), dpi=120)
    ax_reward.plot(list(reward), list(reward.values()), color="tab:blue", marker=".", label="mean reward (rollouts)")
    ax_reward.set_xlabel("step")
    ax_reward.set_ylabel("mean reward (+1/-1)", color="tab:blue")
    ax_reward.set_ylim(-1.05, 1.05)
    ax_valid = ax_reward.twinx()
    steps = sorted(valid)
    ax_valid.plot(steps, [valid[s] for s in steps], color="tab:orange", marker="o", label="validation accuracy")
    ax_valid.set_ylabel("validation accuracy (greedy)", color="tab:orange")
    ax_valid.set_ylim(0, 1)
    ax_reward.set_title(f"{run.run_id}: {run.task}" + (f" -> {run.expert}" if run.expert else ""))
    ax_reward.grid(alpha=0.3)
    fig.tight_layout()
    path = path.absolute()
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
