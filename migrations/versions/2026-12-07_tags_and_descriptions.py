"""Tags (JSON, string to string) and a description on datasets, jobs, models and versions.

Revision ID: b3d5f7a9c1e3
Revises: a2c4e6f8b0d2
Create Date: 2026-12-07 12:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3d5f7a9c1e3"
down_revision: str | None = "a2c4e6f8b0d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TABLES = ("datasets", "jobs", "registered_models", "model_versions")


# Plain ALTER TABLE, not Alembic's batch mode: on SQLite that copies a table to a new one,
# and the copy of `jobs` would lose its tally triggers (migration f1b3d5e7a9c1).


def upgrade() -> None:
    for table in _TABLES:
        op.add_column(table, sa.Column("tags", sa.JSON(), server_default="{}", nullable=False))
        op.add_column(table, sa.Column("description", sa.Text(), nullable=True))


def downgrade() -> None:
    for table in _TABLES:
        for column in ("description", "tags"):
            # SQLite drops a column in place since 3.35.
            op.execute(f"ALTER TABLE {table} DROP COLUMN {column}")
