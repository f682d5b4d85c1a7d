"""A base model in the registry for tests that need its row but no weights: one description of a tiny Llama."""

from __future__ import annotations

from registry import Registry
from registry.queries import base_models
from registry.records import BaseModelRecord, NewBaseModel


def new_base_model(fingerprint: str = "f" * 64, name: str = "tiny-llama") -> NewBaseModel:
    """A tiny Llama as the registry describes it (no weights behind it)."""
    return NewBaseModel(
        name=name,
        source="local",
        location=f"/models/{name}",
        revision=None,
        fingerprint=fingerprint,
        architecture="LlamaForCausalLM",
        model_type="llama",
        num_layers=2,
        hidden_size=8,
        config={"model_type": "llama", "num_hidden_layers": 2},
    )


def add_base_model(registry: Registry, fingerprint: str = "f" * 64, name: str = "tiny-llama") -> BaseModelRecord:
    """``new_base_model(fingerprint, name)`` registered (or the one already registered with that fingerprint)."""
    return base_models.get_or_add(registry, new_base_model(fingerprint, name))
