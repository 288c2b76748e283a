"""Alias history: every set, rollback and delete of an alias, with who and when.

Revision ID: a2c4e6f8b0d2
Revises: f1b3d5e7a9c1
Create Date: 2026-12-07 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a2c4e6f8b0d2"
down_revision: str | None = "f1b3d5e7a9c1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "alias_changes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("model_name", sa.String(length=200), nullable=False),
        sa.Column("alias", sa.String(length=100), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("changed_by", sa.String(length=40), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alias_changes")),
    )
    op.create_index(
        "ix_alias_changes_model_name_alias_id",
        "alias_changes",
        ["model_name", "alias", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_alias_changes_model_name_alias_id", table_name="alias_changes")
    op.drop_table("alias_changes")
