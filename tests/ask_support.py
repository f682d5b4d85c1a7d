"""Helpers for the two-pass inference tests: source tasks, registered category experts, registry snapshots."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tests.expert_factory import make_expert


def write_task(path: Path, prefix: str, n: int = 12) -> Path:
    """A custom .jsonl task of ``n`` short questions with explicit splits (8 train, 2 valid, 2 test)."""
    lines = []
    for i in range(n):
        split = "train" if i < n - 4 else "valid" if i < n - 2 else "test"
        lines.append(json.dumps({"prompt": f"{prefix} {i}?", "answer": str(i), "kind": "number", "split": split}))
    path.write_text("\n".join(lines) + "\n")
    return path


def add_expert(
    registry,
    adaptable,
    name: str,
    *,
    category: str | None,
    task: str | None = None,
    kind: str = "trained",
    scale: float = 0.5,
    seed: int = 0,
    parametrization: dict | None = None,
    parents: list[dict] | None = None,
) -> dict[str, torch.Tensor]:
    """Register an expert with a random z (1 + scale * noise) on the loaded model; returns its z."""
    return make_expert(
        registry,
        adaptable,
        name,
        seed=seed,
        scale=scale,
        parents=parents,
        kind=kind,
        task=Path(task).stem if task and task.endswith(".jsonl") else task,
        category=category,
        description=f"test expert {name}",
        parametrization=parametrization or {"stored": "effective_multiplier"},
        metrics={},
        training={"task": task} if task else {},
    )


@contextmanager
def math_and_code_experts(model: Path, folder: Path) -> Iterator[tuple]:
    """The model loaded in the test's registry with expert m (math, task sums.jsonl) and c (code, funcs.jsonl).

    Yields (registry, adaptable, z by expert name, task file by category).
    """
    from t2cli.home import open_registry
    from t2cli.svf.adaptable import load_adaptable

    tasks = {
        "math": str(write_task(folder / "sums.jsonl", "What is 1 plus")),
        "code": str(write_task(folder / "funcs.jsonl", "Write a function number")),
    }
    with open_registry() as registry:
        adaptable = load_adaptable(registry, str(model), device="cpu")
        zs = {
            "m": add_expert(registry, adaptable, "m", category="math", task=tasks["math"], seed=1),
            "c": add_expert(registry, adaptable, "c", category="code", task=tasks["code"], seed=2),
        }
        yield registry, adaptable, zs, tasks


def registry_snapshot(home: Path) -> tuple:
    """Row counts of every table and the blob files: equal snapshots mean an unchanged registry."""
    from t2cli.home import open_registry

    with open_registry() as registry:
        rows = registry.status().rows
    blobs = sorted(str(p.relative_to(home)) for p in (home / "blobs").rglob("*") if p.is_file())
    return rows, blobs
