"""Appending to a job's event log with gap-free, per-job sequence numbers."""

from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent
from app.enums import EventType, JobStatus
from app.ids import utcnow
from app.services import webhook_outbox


def add_event(
    session: Session,
    job_id: str,
    event_type: EventType,
    message: str,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event; the counter bump serialises writers on the job's row."""
    seq = (
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(next_event_seq=Job.next_event_seq + 1)
            .returning(Job.next_event_seq)
        ).scalar_one()
        - 1
    )
    event = JobEvent(
        job_id=job_id, seq=seq, created_at=utcnow(), type=event_type, message=message, data=data
    )
    session.add(event)
    status = (data or {}).get("status")
    if event_type == EventType.STATUS and status in _FINAL:
        # Every way a job ends writes this event: the webhook it owes is queued with it.
        webhook_outbox.owe(session, job_id, str(status))
    session.flush()
    return event


_FINAL = {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}
