"""Memory a loaded version takes: model_versions.memory_bytes, filled in for existing rows.

Revision ID: a4b2c6d8e0f1
Revises: 78bb20742809
Create Date: 2026-11-27 21:40:00.000000
"""

import json
import struct
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a4b2c6d8e0f1"
down_revision: str | None = "78bb20742809"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _tensor_bytes(weights: bytes) -> int:
    # The safetensors header lists every tensor's byte range; their sum is what loading takes.
    # A copy of app.ml.serialization.tensor_bytes, because migrations must not import app code.
    (header_length,) = struct.unpack("<Q", weights[:8])
    header = json.loads(weights[8 : 8 + header_length])
    return sum(
        int(entry["data_offsets"][1]) - int(entry["data_offsets"][0])
        for name, entry in header.items()
        if name != "__metadata__"
    )


def upgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("memory_bytes", sa.BigInteger(), nullable=True))
    versions = sa.table(
        "model_versions",
        sa.column("id", sa.String),
        sa.column("weights", sa.LargeBinary),
        sa.column("memory_bytes", sa.BigInteger),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(versions.c.id, versions.c.weights)).all()
    for version_id, weights in rows:
        connection.execute(
            versions.update()
            .where(versions.c.id == version_id)
            .values(memory_bytes=_tensor_bytes(bytes(weights)))
        )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.alter_column("memory_bytes", existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_column("memory_bytes")
