"""What the registry's query functions return: frozen dataclasses, one per kind of row.

The engine reads these attributes; it never sees a SQLAlchemy row or a dict keyed by
column names. Settings stored as JSON text (``config_json``) come back as that text:
what they mean belongs to the engine (``t2cli.svf.expert.ExpertConfig`` for an expert).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class BaseModelRecord:
    """A registered base model (``base_models``)."""

    id: int
    name: str
    source: str  # "embedded" | "local" | "hub" | "gguf"
    location: str  # local path or Hub repo id
    revision: str | None
    fingerprint: str  # identity hash of the weights
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    config: dict[str, Any] = field(default_factory=dict)  # the model's config.json


@dataclass(frozen=True)
class NewBaseModel:
    """A base model to register (``base_models.get_or_add``): a ``BaseModelRecord`` without an id."""

    name: str
    source: str
    location: str
    revision: str | None
    fingerprint: str
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    config: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DecompositionRecord:
    """One SVD of a set of a base model's matrices (``decompositions``)."""

    id: int
    base_model_id: int
    targets_spec: str
    targets_key: str
    dtype: str
    method: str
    status: str  # "partial" | "complete"
    num_matrices: int  # how many it should hold
    stored_matrices: int  # how many rows it holds now
    size_bytes: int
    max_rel_error: float | None
    seconds: float | None


@dataclass(frozen=True)
class MatrixRecord:
    """One decomposed matrix (``decomposition_matrices``): where its U, S, Vh blob is."""

    name: str
    layer: int
    role: str
    rows: int
    cols: int
    rank: int
    blob_sha256: str
    rel_error: float
    seconds: float


@dataclass(frozen=True)
class MatrixSummary:
    """What a decomposition holds so far: matrix count, worst error, bytes of its blobs."""

    count: int
    max_rel_error: float | None
    size_bytes: int


@dataclass(frozen=True)
class ParentLink:
    """An expert's parent: its name, mixing weight (if any) and relation ("mixed", "transferred", ...)."""

    name: str
    weight: float | None
    relation: str


@dataclass(frozen=True)
class ExpertRecord:
    """A registered expert (``experts``) with its base model's name and location."""

    id: int
    name: str
    base_model_id: int
    base_model_name: str
    base_model_location: str
    decomposition_id: int | None
    kind: str  # "trained" | "mixture" | "transferred" | "imported" | "merged"
    task: str | None
    category: str | None
    description: str | None
    targets_spec: str | None  # the --targets spec of its decomposition
    matrices: tuple[str, ...]  # the matrix names it adapts
    blob_sha256: str  # its expert.safetensors
    config_json: str  # its expert_config.json
    created_at: datetime


@dataclass(frozen=True)
class NewExpert:
    """An expert to register (``experts.add``); its z file is already in the blob store."""

    name: str
    base_model_id: int
    decomposition_id: int | None
    kind: str
    task: str | None
    category: str | None
    description: str | None
    targets_spec: str
    matrices: tuple[str, ...]
    config_json: str
    parents: tuple[ParentLink, ...] = ()  # linked to the registered experts of these names


@dataclass(frozen=True)
class EvaluationRecord:
    """One accuracy measurement (``evaluations``); ``expert_id`` None: the base weights."""

    id: int
    base_model_id: int
    expert_id: int | None
    task: str
    split: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    config: dict[str, Any]  # the settings it ran with (limit, max_new_tokens, strategy...)
    seconds: float | None
    created_at: datetime


@dataclass(frozen=True)
class NewEvaluation:
    """An evaluation to record (``evaluations.add``)."""

    base_model_id: int
    expert_id: int | None
    task: str
    split: str
    n: int
    correct: int
    accuracy: float
    ci_low: float
    ci_high: float
    config: dict[str, Any]
    seconds: float | None


@dataclass(frozen=True)
class RunRecord:
    """A training run (``training_runs``), with the name of the expert it produced."""

    id: int
    run_id: str
    base_model_id: int
    expert_id: int | None
    expert_name: str | None
    task: str
    status: str  # as stored: "running" | "finished" | "failed" | "interrupted"
    config_json: str  # the run's TrainConfig
    checkpoint_dir: str | None
    started_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class RouterRecord:
    """A registered router (``routers``) with its base model's name and location."""

    id: int
    name: str
    base_model_id: int
    base_model_name: str
    base_model_location: str
    blob_sha256: str  # its router.safetensors
    valid_accuracy: float | None
    config_json: str  # its router_config.json: features, classes, the experts it routes to, lineage
    created_at: datetime


@dataclass(frozen=True)
class NewRouter:
    """A router to register (``routers.add``); its weights file is already in the blob store."""

    name: str
    base_model_id: int
    valid_accuracy: float | None
    config_json: str
