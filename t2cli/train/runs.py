"""Training runs as recorded in the registry, and their learning curves."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from registry.queries import runs
from registry.records import RunRecord
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
    return [_info(record, {}) for record in runs.all_runs(registry)]


def get_run(registry: Registry, run_id: str, *, with_metrics: bool = True) -> RunInfo:
    """One run with its per-step metrics."""
    record = runs.get(registry, run_id)
    if record is None:
        recent = runs.recent_ids(registry, 5)
        raise T2Error(
            f"no training run {run_id!r}",
            f"recent runs: {', '.join(recent)}" if recent else "train one with `t2 train`",
        )
    return _info(record, runs.metrics(registry, run_id) if with_metrics else {})


def _info(record: RunRecord, metrics: dict[str, dict[int, float]]) -> RunInfo:
    status = record.status
    if status == "running" and not run_in_progress(record.checkpoint_dir):
        status = "interrupted"  # its process died without saying so (kill -9, power loss)
    return RunInfo(
        run_id=record.run_id,
        task=record.task,
        status=status,
        expert=record.expert_name,
        started_at=str(record.started_at),
        finished_at=str(record.finished_at) if record.finished_at else None,
        config=json.loads(record.config_json),
        metrics=metrics,
    )


def plot_learning_curve(run: RunInfo, path: Path, *, base_valid: float | None = None) -> Path:
    """Reward (mean over rollouts) and validation accuracy against step, as a PNG (atomic write)."""
    import matplotlib  # noqa: PLC0415 - heavy: matplotlib (~1 s), only when plotting

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy: matplotlib (~1 s), only when plotting

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
