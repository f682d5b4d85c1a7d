"""What the registry's query functions return: frozen dataclasses, one per kind of row.

The engine reads these attributes; it never sees a SQLAlchemy row or a dict keyed by
column names. Settings stored as JSON text (``config_json``) come back as that text:
what they mean belongs to the engine (``t2cli.svf.expert.ExpertConfig`` for an expert).
Where a kind of row is also written from a dataclass (``NewBaseModel``, ``NewEvaluation``),
its record is that dataclass with the row's id first (``Row``), so each field is declared once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

R = TypeVar("R", bound="DataclassInstance")


def from_attributes(cls: type[R], source: object, **values: Any) -> R:
    """A ``cls`` (a dataclass) with ``values``, its other fields read from ``source``'s attributes of the same names.

    ``source`` is a SQLAlchemy row or another record (a subclass's extra fields go in ``values``).
    """
    names = (f.name for f in fields(cls))
    return cls(**{name: values[name] if name in values else getattr(source, name) for name in names})


def values_of(record: DataclassInstance, *, without: tuple[str, ...] = ()) -> dict[str, Any]:
    """A record's fields by name, not copied (unlike ``asdict``), less those in ``without``: a row's columns."""
    return {f.name: getattr(record, f.name) for f in fields(record) if f.name not in without}


@dataclass(frozen=True)
class Row:
    """The id a row got when it was added: the first field of a record whose fields a ``New...`` declares."""

    id: int


@dataclass(frozen=True)
class NewBaseModel:
    """A base model to register (``base_models.get_or_add``)."""

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
class BaseModelRecord(NewBaseModel, Row):
    """A registered base model (``base_models``): its ``id``, then the fields of ``NewBaseModel``."""


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
class NewEvaluation:
    """An evaluation to record (``evaluations.add``); ``expert_id`` None: the base weights."""

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


@dataclass(frozen=True)
class EvaluationRecord(NewEvaluation, Row):
    """One accuracy measurement (``evaluations``): its ``id``, the fields of ``NewEvaluation``, when it was made."""

    created_at: datetime


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
