from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Dataset(Base):
    __tablename__ = "datasets"
    # Lists go newest first, `id` breaking ties: pages come off this index, unsorted.
    __table_args__ = (Index("ix_datasets_created_at_id", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    format: Mapped[str] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    origin: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The API key that asked for it (None: made with auth disabled, or before keys).
    created_by: Mapped[str | None] = mapped_column(String(40), index=True)
    # Free-form labels (string to string) and text, set at creation or by PATCH.
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
    # The file's bytes are in `dataset_parts` (app/services/dataset_files.py).
