"""Routers: learned pass-1 classifiers over a base model's hidden states.

Revision ID: 0002_routers
Revises: 0001_initial
Create Date: 2026-12-05
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_routers"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the ``routers`` table."""
    op.create_table(
        "routers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("base_model_id", sa.Integer(), nullable=False),
        sa.Column("blob_sha256", sa.String(64), nullable=False),
        sa.Column("valid_accuracy", sa.Float(), nullable=True),
        sa.Column("config_json", sa.Text(), server_default="{}", nullable=False),
        sa.Column("created_at", sa.DateTime(), server_default=sa.text("CURRENT_TIMESTAMP"), nullable=False),
        sa.ForeignKeyConstraint(
            ["base_model_id"],
            ["base_models.id"],
            name=op.f("fk_routers_base_model_id_base_models"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["blob_sha256"], ["blobs.sha256"], name=op.f("fk_routers_blob_sha256_blobs"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_routers")),
        sa.UniqueConstraint("name", name=op.f("uq_routers_name")),
    )
    op.create_index(op.f("ix_routers_base_model_id"), "routers", ["base_model_id"])
    op.create_index(op.f("ix_routers_blob_sha256"), "routers", ["blob_sha256"])


def downgrade() -> None:
    """Drop the ``routers`` table."""
    op.drop_table("routers")
