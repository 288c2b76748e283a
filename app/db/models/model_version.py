from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model_name", "version"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("registered_models.name"))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The API key that asked for it (None: made with auth disabled, or before keys).
    created_by: Mapped[str | None] = mapped_column(String(40), index=True)
    job_id: Mapped[str | None] = mapped_column(String(40), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[str | None] = mapped_column(String(32))
    parent_name: Mapped[str | None] = mapped_column(String(200))
    parent_version: Mapped[int | None] = mapped_column(Integer)
    dataset_id: Mapped[str] = mapped_column(String(40))
    task: Mapped[str] = mapped_column(String(16))
    signature: Mapped[dict[str, Any]] = mapped_column(JSON)
    architecture: Mapped[dict[str, Any]] = mapped_column(JSON)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    preprocessing: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    # Parameters and buffers once loaded: what the serving cache counts against its byte bound.
    memory_bytes: Mapped[int] = mapped_column(BigInteger)
    # This version, then each ancestor, with the sha256 of every dataset it was trained on:
    # a snapshot taken at registration, so it outlives deleted datasets and parents.
    lineage: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # Free-form labels (string to string) and text: the job's at registration, then PATCH.
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
    weights: Mapped[bytes] = mapped_column(LargeBinary, deferred=True, deferred_raiseload=True)
