"""Make registered experts on tiny models without training: random z near 1, a real config."""

from __future__ import annotations

from typing import Any

import torch

from t2cli.svf.expert import ExpertConfig, register_expert


def make_expert(
    registry,
    adaptable,
    name: str = "sums-v1",
    *,
    seed: int = 0,
    scale: float = 0.3,
    parents: list[dict] | None = None,
    kind: str = "trained",
    **fields: Any,
) -> dict[str, torch.Tensor]:
    """Register an expert with z = 1 + scale * N(0, 1) on every matrix of ``adaptable``; returns z.

    ``fields``: other ``ExpertConfig`` fields, in place of a math expert's task, category, description and metrics.
    """
    generator = torch.Generator().manual_seed(seed)
    z = {key: 1.0 + scale * torch.randn(f.S.shape, generator=generator) for key, f in adaptable.svf.factors.items()}
    described = {
        "task": "sums",
        "category": "math",
        "description": "a test expert",
        "metrics": {"valid_accuracy": 0.5, "base_valid_accuracy": 0.25},
        **fields,
    }
    config = ExpertConfig(
        name=name,
        base_model=adaptable.base_model_record(),
        targets=adaptable.targets,
        num_matrices=len(z),
        kind=kind,
        parents=parents or [],
        **described,
    )
    register_expert(
        registry, z, config, base_model_id=adaptable.base_model_id, decomposition_id=adaptable.decomposition_id
    )
    return z
