"""Batch prediction and evaluation jobs: jobs.result_dataset_id, model_evaluations.

Revision ID: e6a8c0d2f4b6
Revises: d5f7b9c1e3a5
Create Date: 2026-12-07 15:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e6a8c0d2f4b6"
down_revision: str | None = "d5f7b9c1e3a5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Plain ALTER TABLE: batch mode would copy `jobs` and lose its tally triggers.
    op.add_column("jobs", sa.Column("result_dataset_id", sa.String(length=40), nullable=True))
    op.create_table(
        "model_evaluations",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=40), nullable=True),
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("dataset_name", sa.String(length=200), nullable=False),
        sa.Column("dataset_sha256", sa.String(length=64), nullable=False),
        sa.Column("target_column", sa.String(length=200), nullable=False),
        sa.Column("task", sa.String(length=16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_evaluations")),
    )
    op.create_index(
        "ix_model_evaluations_version",
        "model_evaluations",
        ["model_name", "version", "created_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_model_evaluations_version", table_name="model_evaluations")
    op.drop_table("model_evaluations")
    op.execute("ALTER TABLE jobs DROP COLUMN result_dataset_id")
