from datetime import datetime

from sqlalchemy import Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class RegisteredModel(Base):
    __tablename__ = "registered_models"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    # Monotonic: a deleted version's number is never handed out again.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
