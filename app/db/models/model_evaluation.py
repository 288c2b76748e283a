from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class ModelEvaluation(Base):
    """A version's scores on a labelled dataset, written by an evaluation job.

    The dataset's name and sha256 are copied: the scores keep saying what they were measured
    on after the dataset is deleted. Removed with their version.
    """

    __tablename__ = "model_evaluations"
    # A version's evaluations, newest first, come off this index unsorted.
    __table_args__ = (
        Index("ix_model_evaluations_version", "model_name", "version", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    model_name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str | None] = mapped_column(String(40))
    dataset_id: Mapped[str] = mapped_column(String(40))
    dataset_name: Mapped[str] = mapped_column(String(200))
    dataset_sha256: Mapped[str] = mapped_column(String(64))
    target_column: Mapped[str] = mapped_column(String(200))
    task: Mapped[str] = mapped_column(String(16))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    created_by: Mapped[str | None] = mapped_column(String(40))
