"""Lineage with dataset hashes on every version; the source dataset a joint job reads.

model_versions.lineage is a snapshot taken when the version is registered: the version and
each ancestor with the id, name and sha256 of every dataset it was trained on, so the proof
of what data made a model outlives deleted datasets and parents. Existing versions get it
computed from what is still in the database. jobs.source_dataset_id names the dataset a
queued or running `joint` fine-tune will read besides its target, so deleting it is refused.

Revision ID: c7d9e1f3a5b7
Revises: a4b2c6d8e0f1
Create Date: 2026-12-04 19:10:00.000000
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "c7d9e1f3a5b7"
down_revision: str | None = "a4b2c6d8e0f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _dataset_ref(row: Any, dataset_id: str, role: str) -> dict[str, Any]:
    if row is None:
        return {
            "id": dataset_id,
            "role": role,
            "name": None,
            "sha256": None,
            "rows": None,
            "size_bytes": None,
        }
    return {
        "id": dataset_id,
        "role": role,
        "name": row.name,
        "sha256": row.sha256,
        "rows": row.rows,
        "size_bytes": row.size_bytes,
    }


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("source_dataset_id", sa.String(length=40), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_jobs_source_dataset_id"), ["source_dataset_id"], unique=False
        )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("lineage", sa.JSON(), nullable=True))

    connection = op.get_bind()
    datasets = sa.table(
        "datasets",
        sa.column("id", sa.String),
        sa.column("name", sa.String),
        sa.column("sha256", sa.String),
        sa.column("rows", sa.Integer),
        sa.column("size_bytes", sa.Integer),
    )
    versions = sa.table(
        "model_versions",
        sa.column("id", sa.String),
        sa.column("model_name", sa.String),
        sa.column("version", sa.Integer),
        sa.column("created_at", sa.DateTime),
        sa.column("job_id", sa.String),
        sa.column("kind", sa.String),
        sa.column("strategy", sa.String),
        sa.column("parent_name", sa.String),
        sa.column("parent_version", sa.Integer),
        sa.column("dataset_id", sa.String),
        sa.column("lineage", sa.JSON),
    )
    known = {row.id: row for row in connection.execute(sa.select(datasets)).all()}
    rows = connection.execute(
        sa.select(versions).order_by(versions.c.created_at, versions.c.id)
    ).all()
    done: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        own = [_dataset_ref(known.get(row.dataset_id), row.dataset_id, "training")]
        entry = {
            "name": row.model_name,
            "version": row.version,
            "kind": row.kind,
            "strategy": row.strategy,
            "job_id": row.job_id,
            "created_at": None if row.created_at is None else str(row.created_at),
            "datasets": own,
        }
        parent: list[dict[str, Any]] = []
        if row.parent_name is not None and row.parent_version is not None:
            parent = done.get(
                (row.parent_name, row.parent_version),
                [
                    {
                        "name": row.parent_name,
                        "version": row.parent_version,
                        "kind": None,
                        "strategy": None,
                        "job_id": None,
                        "created_at": None,
                        "datasets": [],
                    }
                ],
            )
        lineage = [entry, *parent]
        done[(row.model_name, row.version)] = lineage
        connection.execute(versions.update().where(versions.c.id == row.id).values(lineage=lineage))
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.alter_column("lineage", existing_type=sa.JSON(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("lineage")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_source_dataset_id"))
        batch_op.drop_column("source_dataset_id")
