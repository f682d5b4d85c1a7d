"""Initial schema: blobs, base models, decompositions, experts, training runs, evaluations.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at(name: str = "created_at") -> sa.Column:
    return sa.Column(name, sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False)


def _config_json() -> sa.Column:
    return sa.Column("config_json", sa.Text(), server_default="{}", nullable=False)


def upgrade() -> None:
    """Create every table of the first registry schema."""
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_blobs")),
    )
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("location", sa.String(), nullable=False),
        sa.Column("revision", sa.String(), nullable=True),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("architecture", sa.String(), nullable=False),
        sa.Column("model_type", sa.String(), nullable=False),
        sa.Column("num_layers", sa.Integer(), nullable=False),
        sa.Column("hidden_size", sa.Integer(), nullable=False),
        _config_json(),
        _created_at(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_base_models")),
        sa.UniqueConstraint("fingerprint", name=op.f("uq_base_models_fingerprint")),
    )
    op.create_index(op.f("ix_base_models_name"), "base_models", ["name"])
    op.create_table(
        "decompositions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("targets_spec", sa.String(), nullable=False),
        sa.Column("targets_key", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("status", sa.String(), server_default="partial", nullable=False),
        sa.Column("num_matrices", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("size_bytes", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("max_rel_error", sa.Float(), nullable=True),
        sa.Column("seconds", sa.Float(), nullable=True),
        _created_at(),
        sa.Column("completed_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_decompositions_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decompositions")),
        sa.UniqueConstraint("base_model_id", "targets_key", name=op.f("uq_decompositions_base_model_id_targets_key")),
    )
    op.create_table(
        "decomposition_matrices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("decomposition_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("layer", sa.Integer(), nullable=False),
        sa.Column("role", sa.String(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("cols", sa.Integer(), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=False),
        sa.Column("blob_sha256", sa.String(64), nullable=False),
        sa.Column("rel_error", sa.Float(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["decomposition_id"],
            ["decompositions.id"],
            name=op.f("fk_decomposition_matrices_decomposition_id_decompositions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["blob_sha256"],
            ["blobs.sha256"],
            name=op.f("fk_decomposition_matrices_blob_sha256_blobs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_decomposition_matrices")),
        sa.UniqueConstraint("decomposition_id", "name", name=op.f("uq_decomposition_matrices_decomposition_id_name")),
    )
    op.create_index(op.f("ix_decomposition_matrices_blob_sha256"), "decomposition_matrices", ["blob_sha256"])
    op.create_table(
        "experts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("decomposition_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("task", sa.String(), nullable=True),
        sa.Column("category", sa.String(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("targets_json", sa.Text(), nullable=False),
        sa.Column("blob_sha256", sa.String(64), nullable=False),
        _config_json(),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_experts_base_model_id_base_models"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["decomposition_id"],
            ["decompositions.id"],
            name=op.f("fk_experts_decomposition_id_decompositions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["blob_sha256"], ["blobs.sha256"], name=op.f("fk_experts_blob_sha256_blobs"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experts")),
        sa.UniqueConstraint("name", name=op.f("uq_experts_name")),
    )
    op.create_index(op.f("ix_experts_base_model_id"), "experts", ["base_model_id"])
    op.create_index(op.f("ix_experts_decomposition_id"), "experts", ["decomposition_id"])
    op.create_index(op.f("ix_experts_blob_sha256"), "experts", ["blob_sha256"])
    op.create_table(
        "expert_parents",
        sa.Column("expert_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Float(), nullable=True),
        sa.Column("relation", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["expert_id"], ["experts.id"], name=op.f("fk_expert_parents_expert_id_experts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["experts.id"], name=op.f("fk_expert_parents_parent_id_experts"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("expert_id", "parent_id", name=op.f("pk_expert_parents")),
    )
    op.create_index(op.f("ix_expert_parents_parent_id"), "expert_parents", ["parent_id"])
    op.create_table(
        "expert_tags",
        sa.Column("expert_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(), nullable=False),
        sa.ForeignKeyConstraint(
            ["expert_id"], ["experts.id"], name=op.f("fk_expert_tags_expert_id_experts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("expert_id", "tag", name=op.f("pk_expert_tags")),
    )
    op.create_index(op.f("ix_expert_tags_tag"), "expert_tags", ["tag"])
    op.create_table(
        "training_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("expert_id", sa.Integer(), nullable=True),
        sa.Column("task", sa.String(), nullable=False),
        sa.Column("status", sa.String(), server_default="running", nullable=False),
        _config_json(),
        sa.Column("checkpoint_dir", sa.String(), nullable=True),
        _created_at("started_at"),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_training_runs_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["expert_id"], ["experts.id"], name=op.f("fk_training_runs_expert_id_experts"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_training_runs_run_id")),
    )
    op.create_index(op.f("ix_training_runs_base_model_id"), "training_runs", ["base_model_id"])
    op.create_index(op.f("ix_training_runs_expert_id"), "training_runs", ["expert_id"])
    op.create_table(
        "run_metrics",
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["training_runs.id"], name=op.f("fk_run_metrics_run_id_training_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "step", "name", name=op.f("pk_run_metrics")),
    )
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("expert_id", sa.Integer(), nullable=True),
        sa.Column("task", sa.String(), nullable=False),
        sa.Column("split", sa.String(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("accuracy", sa.Float(), nullable=False),
        sa.Column("ci_low", sa.Float(), nullable=False),
        sa.Column("ci_high", sa.Float(), nullable=False),
        _config_json(),
        sa.Column("seconds", sa.Float(), nullable=True),
        _created_at(),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_evaluations_base_model_id_base_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["expert_id"], ["experts.id"], name=op.f("fk_evaluations_expert_id_experts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluations")),
    )
    op.create_index(op.f("ix_evaluations_expert_id"), "evaluations", ["expert_id"])
    op.create_index(op.f("ix_evaluations_base_model_id_task"), "evaluations", ["base_model_id", "task"])


def downgrade() -> None:
    """Drop every table, children before parents."""
    for table in (
        "evaluations",
        "run_metrics",
        "training_runs",
        "expert_tags",
        "expert_parents",
        "experts",
        "decomposition_matrices",
        "decompositions",
        "base_models",
        "blobs",
    ):
        op.drop_table(table)
