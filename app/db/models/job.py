from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from app.db.base import Base, UTCDateTime


class Job(Base):
    __tablename__ = "jobs"
    # Every list order (newest first, id breaking ties) and filter has an index that yields
    # a page without a sort: unfiltered, by status, by kind, by both. The status one also
    # serves the queue's claim (oldest queued first).
    __table_args__ = (
        Index("ix_jobs_created_at_id", "created_at", "id"),
        Index("ix_jobs_status_created_at_id", "status", "created_at", "id"),
        Index("ix_jobs_kind_created_at_id", "kind", "created_at", "id"),
        Index("ix_jobs_status_kind_created_at_id", "status", "kind", "created_at", "id"),
        # Retention finds jobs that ended before a cutoff without reading the others.
        Index("ix_jobs_finished_at", "finished_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    request: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Lineage kept as plain columns (no foreign keys) so "in use" checks are indexed
    # queries and the history of a job outlives the dataset or version it used.
    dataset_id: Mapped[str] = mapped_column(String(40), index=True)
    # The base version's training dataset, which a `joint` fine-tune reads too.
    source_dataset_id: Mapped[str | None] = mapped_column(String(40), index=True)
    model_name: Mapped[str] = mapped_column(String(200))
    base_model_name: Mapped[str | None] = mapped_column(String(200))
    base_model_version: Mapped[int | None] = mapped_column(Integer)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    result_model_name: Mapped[str | None] = mapped_column(String(200))
    result_version: Mapped[int | None] = mapped_column(Integer)
    # A batch prediction's output, fixed when the job is queued; the dataset row with this
    # id exists once the job has succeeded.
    result_dataset_id: Mapped[str | None] = mapped_column(String(40))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(100))
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True)
    request_hash: Mapped[str | None] = mapped_column(String(64))
    next_event_seq: Mapped[int] = mapped_column(Integer, default=1)
    # The API key that asked for it (None: made with auth disabled, or before keys).
    created_by: Mapped[str | None] = mapped_column(String(40))
    # Called when the job ends (app/jobs/webhooks.py).
    webhook_url: Mapped[str | None] = mapped_column(Text)
    # Free-form labels (string to string) and text, set at creation or by PATCH.
    tags: Mapped[dict[str, str]] = mapped_column(JSON, default=dict, server_default="{}")
    description: Mapped[str | None] = mapped_column(Text)
