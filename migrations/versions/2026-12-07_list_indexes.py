"""Indexes that give every list its page without a sort: (created_at, id) and, for jobs,
the same behind each filter (status, kind, both); and a key's active jobs by (created_by,
status), for its quota; and jobs by finished_at, for retention.

Revision ID: e9f1a3b5c7d9
Revises: d8e0f2a4b6c8
Create Date: 2026-12-07 09:00:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "e9f1a3b5c7d9"
down_revision: str | None = "d8e0f2a4b6c8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, index dropped, [(index created, columns)])
_CHANGES = [
    ("registered_models", ["created_at"], [("created_at", "name")]),
    ("datasets", ["created_at"], [("created_at", "id")]),
    ("api_keys", ["created_at"], [("created_at", "id")]),
    (
        "jobs",
        ["created_at", "kind", "status_created_at", "created_by"],
        [
            ("created_at", "id"),
            ("status", "created_at", "id"),
            ("kind", "created_at", "id"),
            ("status", "kind", "created_at", "id"),
            ("created_by", "status"),
            ("finished_at",),
        ],
    ),
]
# The single-column indexes these replace, to put back on downgrade.
_OLD_COLUMNS = {
    "created_at": ("created_at",),
    "kind": ("kind",),
    "status_created_at": ("status", "created_at"),
    "created_by": ("created_by",),
}


def upgrade() -> None:
    for table, dropped, created in _CHANGES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for name in dropped:
                batch_op.drop_index(f"ix_{table}_{name}")
            for columns in created:
                batch_op.create_index(f"ix_{table}_{'_'.join(columns)}", list(columns))


def downgrade() -> None:
    for table, dropped, created in _CHANGES:
        with op.batch_alter_table(table, schema=None) as batch_op:
            for columns in created:
                batch_op.drop_index(f"ix_{table}_{'_'.join(columns)}")
            for name in dropped:
                batch_op.create_index(f"ix_{table}_{name}", list(_OLD_COLUMNS[name]))
