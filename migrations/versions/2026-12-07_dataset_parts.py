"""Datasets' files move to dataset_parts, a megabyte per row.

Revision ID: d5f7b9c1e3a5
Revises: c4e6a8b0d2f4
Create Date: 2026-12-07 14:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d5f7b9c1e3a5"
down_revision: str | None = "c4e6a8b0d2f4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The size of a stored piece; app/services/dataset_files.py writes the same.
_PART_BYTES = 1 << 20


def upgrade() -> None:
    op.create_table(
        "dataset_parts",
        sa.Column("dataset_id", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("dataset_id", "seq", name=op.f("pk_dataset_parts")),
    )
    bind = op.get_bind()
    parts = sa.table(
        "dataset_parts",
        sa.column("dataset_id", sa.String),
        sa.column("seq", sa.Integer),
        sa.column("content", sa.LargeBinary),
    )
    ids = [row[0] for row in bind.execute(sa.text("SELECT id FROM datasets ORDER BY id"))]
    # One dataset's bytes in memory at a time (at most the upload limit).
    for dataset_id in ids:
        content = bind.execute(
            sa.text("SELECT content FROM datasets WHERE id = :id"), {"id": dataset_id}
        ).scalar_one()
        content = bytes(content or b"")
        for seq, start in enumerate(range(0, len(content), _PART_BYTES)):
            piece = content[start : start + _PART_BYTES]
            bind.execute(parts.insert(), {"dataset_id": dataset_id, "seq": seq, "content": piece})
    op.execute("ALTER TABLE datasets DROP COLUMN content")


def downgrade() -> None:
    op.add_column("datasets", sa.Column("content", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    ids = [row[0] for row in bind.execute(sa.text("SELECT id FROM datasets ORDER BY id"))]
    for dataset_id in ids:
        pieces = bind.execute(
            sa.text("SELECT content FROM dataset_parts WHERE dataset_id = :id ORDER BY seq"),
            {"id": dataset_id},
        ).scalars()
        content = b"".join(bytes(piece) for piece in pieces)
        bind.execute(
            sa.text("UPDATE datasets SET content = :content WHERE id = :id"),
            {"id": dataset_id, "content": content},
        )
    op.drop_table("dataset_parts")
