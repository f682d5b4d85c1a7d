"""The registry's tables as typed SQLAlchemy models.

Every change here needs a matching revision in ``registry/migrations/versions``;
``tests/test_migrations.py`` fails when the two disagree, and
``docs/registry.md`` is rendered from this metadata (``python -m registry.docs``).
Column ``comment=`` texts are what that page shows (SQLite itself ignores them).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, ClassVar

from sqlalchemy import (
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

# Named constraints: Alembic's batch mode (how SQLite alters tables) can only
# drop or change a constraint it can name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """A datetime stored as naive UTC (SQLite has no time zones) and read back as aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive time is ambiguous (local? UTC?); refusing it keeps every stored time UTC.
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def _created_at(comment: str = "when the row was written (UTC)") -> Mapped[datetime]:
    return mapped_column(UTCDateTime(), default=utcnow, server_default=func.current_timestamp(), comment=comment)


def _config_json() -> Mapped[str]:
    return mapped_column(Text, default="{}", server_default="{}", comment="settings, as sorted JSON")


class Base(DeclarativeBase):
    """Declarative base holding the registry's ``MetaData``."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {datetime: UTCDateTime()}


class Blob(Base):
    """A file in the content-addressed blob store, named by the sha256 of its bytes."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True, comment="sha256 of the content, 64 hex")
    size: Mapped[int] = mapped_column(Integer, comment="bytes")
    kind: Mapped[str] = mapped_column(String, comment='what it holds: "svd", "expert", "checkpoint", ...')
    created_at: Mapped[datetime] = _created_at()


class BaseModel(Base):
    """A base LLM, identified by the hash of its weights."""

    __tablename__ = "base_models"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, index=True, comment='display name or alias, e.g. "smollm2-135m"')
    source: Mapped[str] = mapped_column(String, comment='"embedded" | "local" | "hub" | "gguf"')
    location: Mapped[str] = mapped_column(String, comment="local path or Hub repo id")
    revision: Mapped[str | None] = mapped_column(String, comment="Hub commit, when from the Hub")
    fingerprint: Mapped[str] = mapped_column(String(64), unique=True, comment="identity hash of the weights")
    architecture: Mapped[str] = mapped_column(String, comment='e.g. "LlamaForCausalLM"')
    model_type: Mapped[str] = mapped_column(String, comment='e.g. "llama"')
    num_layers: Mapped[int] = mapped_column(Integer)
    hidden_size: Mapped[int] = mapped_column(Integer)
    config_json: Mapped[str] = mapped_column(Text, default="{}", server_default="{}", comment="the model's config.json")
    created_at: Mapped[datetime] = _created_at()

    decompositions: Mapped[list[Decomposition]] = relationship(
        back_populates="base_model", cascade="all, delete-orphan", passive_deletes=True
    )


class Decomposition(Base):
    """The SVD of a set of a base model's weight matrices, one blob per matrix."""

    __tablename__ = "decompositions"
    __table_args__ = (UniqueConstraint("base_model_id", "targets_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"))
    targets_spec: Mapped[str] = mapped_column(String, comment='what was asked: "all", "mlp", "attn" or a regex')
    targets_key: Mapped[str] = mapped_column(String(64), comment="hash of the sorted resolved matrix names + dtype")
    dtype: Mapped[str] = mapped_column(String, comment='compute dtype: "float32" | "float64"')
    method: Mapped[str] = mapped_column(String, comment="SVD routine used")
    status: Mapped[str] = mapped_column(
        String, default="partial", server_default="partial", comment='"partial" | "complete"'
    )
    num_matrices: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    size_bytes: Mapped[int] = mapped_column(
        Integer, default=0, server_default=text("0"), comment="sum of the blobs' sizes"
    )
    max_rel_error: Mapped[float | None] = mapped_column(Float, comment="worst reconstruction error")
    seconds: Mapped[float | None] = mapped_column(Float, comment="wall time spent decomposing")
    created_at: Mapped[datetime] = _created_at()
    completed_at: Mapped[datetime | None] = mapped_column(comment="when status became complete (UTC)")

    base_model: Mapped[BaseModel] = relationship(back_populates="decompositions")
    matrices: Mapped[list[DecompositionMatrix]] = relationship(
        back_populates="decomposition",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="(DecompositionMatrix.layer, DecompositionMatrix.name)",
    )


class DecompositionMatrix(Base):
    """One decomposed weight matrix: its U, S, V live in one blob."""

    __tablename__ = "decomposition_matrices"
    __table_args__ = (UniqueConstraint("decomposition_id", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    decomposition_id: Mapped[int] = mapped_column(ForeignKey("decompositions.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String, comment='module name, e.g. "model.layers.3.mlp.down_proj"')
    layer: Mapped[int] = mapped_column(Integer)
    role: Mapped[str] = mapped_column(String, comment='e.g. "mlp.down"')
    rows: Mapped[int] = mapped_column(Integer)
    cols: Mapped[int] = mapped_column(Integer)
    rank: Mapped[int] = mapped_column(Integer)
    blob_sha256: Mapped[str] = mapped_column(ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True)
    rel_error: Mapped[float] = mapped_column(Float, comment="relative reconstruction error")
    seconds: Mapped[float] = mapped_column(Float)

    decomposition: Mapped[Decomposition] = relationship(back_populates="matrices")
    blob: Mapped[Blob] = relationship()


class Expert(Base):
    """An SVF expert: a vector per target matrix, stored as one safetensors blob."""

    __tablename__ = "experts"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="RESTRICT"), index=True)
    decomposition_id: Mapped[int | None] = mapped_column(
        ForeignKey("decompositions.id", ondelete="SET NULL"), index=True
    )
    kind: Mapped[str] = mapped_column(String, comment='"trained" | "mixture" | "transferred" | "imported" | "merged"')
    task: Mapped[str | None] = mapped_column(String)
    category: Mapped[str | None] = mapped_column(String)
    description: Mapped[str | None] = mapped_column(Text)
    targets_json: Mapped[str] = mapped_column(Text, comment="JSON list of the matrix names it adapts")
    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True, comment="its expert.safetensors"
    )
    config_json: Mapped[str] = _config_json()
    created_at: Mapped[datetime] = _created_at()

    base_model: Mapped[BaseModel] = relationship()
    decomposition: Mapped[Decomposition | None] = relationship()
    blob: Mapped[Blob] = relationship()
    tags: Mapped[list[ExpertTag]] = relationship(
        back_populates="expert", cascade="all, delete-orphan", passive_deletes=True, order_by="ExpertTag.tag"
    )
    parent_links: Mapped[list[ExpertParent]] = relationship(
        back_populates="expert",
        foreign_keys="ExpertParent.expert_id",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


class Router(Base):
    """A learned pass-1 router: a classifier over the base model's hidden states (``t2 router train``)."""

    __tablename__ = "routers"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String, unique=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="RESTRICT"), index=True)
    blob_sha256: Mapped[str] = mapped_column(
        ForeignKey("blobs.sha256", ondelete="RESTRICT"), index=True, comment="its router.safetensors"
    )
    valid_accuracy: Mapped[float | None] = mapped_column(Float, comment="accuracy on its validation prompts")
    config_json: Mapped[str] = _config_json()
    created_at: Mapped[datetime] = _created_at()

    base_model: Mapped[BaseModel] = relationship()
    blob: Mapped[Blob] = relationship()


class ExpertParent(Base):
    """An expert made from another one (mixed, transferred, fine-tuned)."""

    __tablename__ = "expert_parents"

    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id", ondelete="CASCADE"), primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("experts.id", ondelete="RESTRICT"), primary_key=True, index=True)
    weight: Mapped[float | None] = mapped_column(Float, comment="mixing weight")
    relation: Mapped[str] = mapped_column(String, comment='"mixed" | "transferred" | "finetuned"')

    expert: Mapped[Expert] = relationship(back_populates="parent_links", foreign_keys=[expert_id])
    parent: Mapped[Expert] = relationship(foreign_keys=[parent_id])


class ExpertTag(Base):
    """A free-form label on an expert."""

    __tablename__ = "expert_tags"

    expert_id: Mapped[int] = mapped_column(ForeignKey("experts.id", ondelete="CASCADE"), primary_key=True)
    tag: Mapped[str] = mapped_column(String, primary_key=True, index=True)

    expert: Mapped[Expert] = relationship(back_populates="tags")


class TrainingRun(Base):
    """One training run; its metrics are rows of ``run_metrics``."""

    __tablename__ = "training_runs"

    id: Mapped[int] = mapped_column(primary_key=True)
    run_id: Mapped[str] = mapped_column(String, unique=True, comment='e.g. "run-20261123-1030-ab12"')
    # Runs go with their base model: once the model is gone they cannot be resumed.
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"), index=True)
    expert_id: Mapped[int | None] = mapped_column(
        ForeignKey("experts.id", ondelete="SET NULL"), index=True, comment="the expert it produced"
    )
    task: Mapped[str] = mapped_column(String)
    status: Mapped[str] = mapped_column(
        String,
        default="running",
        server_default="running",
        comment='"running" | "finished" | "failed" | "interrupted"',
    )
    config_json: Mapped[str] = _config_json()
    checkpoint_dir: Mapped[str | None] = mapped_column(String)
    started_at: Mapped[datetime] = _created_at("when the run started (UTC)")
    finished_at: Mapped[datetime | None] = mapped_column(comment="when it stopped, for any reason (UTC)")

    base_model: Mapped[BaseModel] = relationship()
    expert: Mapped[Expert | None] = relationship()


class RunMetric(Base):
    """One logged value of a training run at one step."""

    __tablename__ = "run_metrics"

    run_id: Mapped[int] = mapped_column(
        ForeignKey("training_runs.id", ondelete="CASCADE"), primary_key=True, comment="training_runs.id"
    )
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String, primary_key=True, comment='e.g. "reward", "loss"')
    value: Mapped[float] = mapped_column(Float)


class Evaluation(Base):
    """An accuracy measurement of a base model, with or without an expert, on a task split."""

    __tablename__ = "evaluations"
    __table_args__ = (Index(None, "base_model_id", "task"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    base_model_id: Mapped[int] = mapped_column(ForeignKey("base_models.id", ondelete="CASCADE"))
    expert_id: Mapped[int | None] = mapped_column(
        ForeignKey("experts.id", ondelete="CASCADE"), index=True, comment="NULL: the base weights"
    )
    task: Mapped[str] = mapped_column(String)
    split: Mapped[str] = mapped_column(String)
    n: Mapped[int] = mapped_column(Integer, comment="examples scored")
    correct: Mapped[int] = mapped_column(Integer)
    accuracy: Mapped[float] = mapped_column(Float)
    ci_low: Mapped[float] = mapped_column(Float, comment="95% confidence interval, lower bound")
    ci_high: Mapped[float] = mapped_column(Float, comment="95% confidence interval, upper bound")
    config_json: Mapped[str] = _config_json()
    seconds: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[datetime] = _created_at()

    base_model: Mapped[BaseModel] = relationship()
    expert: Mapped[Expert | None] = relationship()


def blob_reference_columns() -> list[Any]:
    """Every column holding a foreign key to ``blobs.sha256`` (what keeps a blob alive)."""
    target = Blob.__table__.c.sha256
    return [fk.parent for table in Base.metadata.sorted_tables for fk in table.foreign_keys if fk.column is target]
