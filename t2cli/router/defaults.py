"""The router's default feature recipe, importable without torch (the CLI shows it in --help)."""

from __future__ import annotations

POOLINGS = ("mean", "last")
DEFAULT_POOLING = "mean"
DEFAULT_DEPTH = 1.0  # the layer read by default, as a fraction of the depth: 1.0 is the last (bench/router_layers.py)


def default_layers(num_layers: int) -> tuple[int, ...]:
    """The decoder layer(s) read unless told: one layer at ``DEFAULT_DEPTH`` of the model."""
    return (min(num_layers - 1, round(num_layers * DEFAULT_DEPTH)),)


TASK_POOLS = ("category", "expert")  # a class learns from every built-in task of its category, or its expert's own
