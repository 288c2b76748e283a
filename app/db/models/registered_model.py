from datetime import datetime

from sqlalchemy import JSON, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class RegisteredModel(Base):
    __tablename__ = "registered_models"
    # Lists go newest first, `name` breaking ties: pages come off this index, unsorted.
    __table_args__ = (Index("ix_registered_models_created_at_name", "created_at", "name"),)

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # Monotonic: a deleted version's number is never handed out again.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    # Free-form labels (string to string) and text, set at creation or by PATCH.
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
