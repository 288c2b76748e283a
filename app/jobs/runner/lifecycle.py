"""How a claimed job ends: the exceptions that stop it, and the writes that record its end.

Shared by every kind of job (training, batch prediction, evaluation): each status change is
checked against the job's current owner, so a worker that lost its job cannot overwrite it.
"""

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from app.db.models import Job
from app.db.session import Database
from app.enums import EventType, JobStatus
from app.ids import utcnow
from app.services.job_events import add_event

log = logging.getLogger(__name__)


class JobCancelled(Exception):
    """The user asked to cancel; raised from the per-epoch callback."""


class WorkerStopping(Exception):
    """The worker was told to shut down; the job goes back to the queue."""


class JobTimedOut(Exception):
    """The run went past the job's time limit; raised between batches or epochs."""


@dataclass
class WorkerContext:
    worker_id: str
    stop: threading.Event = field(default_factory=threading.Event)
    # The time limit of a job whose request names none (GRAFT_JOB_TIMEOUT_SECONDS).
    job_timeout_seconds: float | None = None


def fail(
    db: Database,
    job_id: str,
    context: WorkerContext,
    code: str,
    message: str,
    detail: str | None = None,
) -> JobStatus:
    """Finish the job as failed with `code`; `detail` (default: the message) is kept on it."""
    finish(
        db,
        job_id,
        context,
        JobStatus.FAILED,
        message,
        error_code=code,
        error_message=detail or message,
    )
    return JobStatus.FAILED


def finish(
    db: Database,
    job_id: str,
    context: WorkerContext,
    status: JobStatus,
    message: str,
    **fields: Any,
) -> None:
    with db.session_scope() as session:
        # Locked, so a cancel or a recovery sweep at this moment waits for this end.
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        if job.status != JobStatus.RUNNING or job.worker_id != context.worker_id:
            return
        job.status = status
        job.finished_at = utcnow()
        for name, value in fields.items():
            setattr(job, name, value)
        add_event(
            session,
            job_id,
            EventType.STATUS,
            message,
            {"status": status, "code": fields.get("error_code")},
        )


def requeue(db: Database, job_id: str, worker_id: str) -> None:
    with db.session_scope() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.status = JobStatus.QUEUED
        job.worker_id = None
        # A clean hand-back is not a failed attempt.
        job.attempts = max(0, job.attempts - 1)
        add_event(
            session,
            job_id,
            EventType.STATUS,
            f"worker {worker_id} is shutting down; job returned to the queue",
            {"status": JobStatus.QUEUED},
        )


def internal_error(exc: Exception, job_id: str, what: str = "the job failed") -> str:
    """A public message for an unexpected exception: its type, never its text or traceback,
    which may hold server paths, SQL or data (the worker's log has them)."""
    return (
        f"{what} because of an internal error ({type(exc).__name__}); the server log has the "
        f"details under job {job_id}"
    )


# Absolute file system paths (POSIX, or Windows drive paths) in a library's error text.
_PATH = re.compile(r"(?<![\w.:/~])/(?:[^\s/'\"]+/)+[^\s/'\"),;\]]*|\b[A-Za-z]:\\[^\s'\"),;\]]+")


def without_paths(message: str) -> str:
    return _PATH.sub("<path>", message)
