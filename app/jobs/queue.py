"""The job queue is the jobs table: atomic claims, heartbeats, recovery of lost jobs."""

import logging
import os
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import Session

from app.db.models import Job, JobEvent
from app.enums import EventType, JobStatus
from app.ids import utcnow
from app.services.job_events import add_event

log = logging.getLogger(__name__)


def make_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(3).hex()}"


def _process_is_gone(worker_id: str | None) -> bool:
    """True when the worker ran on this host and its process no longer exists."""
    if not worker_id:
        return False
    host, _, rest = worker_id.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # A killed process that its parent has not reaped yet still answers signal 0.
    try:
        stat = Path(f"/proc/{pid_text}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] == ["Z"]


def claim_next(session: Session, worker_id: str) -> str | None:
    """Move the oldest queued job to running for `worker_id`; None when the queue is empty.

    The conditional UPDATE is the claim: of two workers racing for one row, only
    one sees rowcount 1. On PostgreSQL SKIP LOCKED also keeps them off each other's rows.
    """
    candidate = select(Job.id).where(Job.status == JobStatus.QUEUED)
    candidate = candidate.order_by(Job.created_at, Job.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    job_id = session.scalar(candidate)
    if job_id is None or not _mark_running(session, job_id, worker_id):
        return None
    return job_id


def _mark_running(session: Session, job_id: str, worker_id: str) -> bool:
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(
            status=JobStatus.RUNNING,
            worker_id=worker_id,
            started_at=now,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
        )
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return False
    add_event(
        session,
        job_id,
        EventType.STATUS,
        "job running",
        {"status": JobStatus.RUNNING, "worker": worker_id},
    )
    return True


def heartbeat(session: Session, job_id: str, worker_id: str) -> bool:
    """Record that `worker_id` still runs the job; False if the job is no longer its own."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.worker_id == worker_id, Job.status == JobStatus.RUNNING)
        .values(heartbeat_at=utcnow())
    )
    return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def requeue_stale(session: Session, *, stale_after: float, max_attempts: int) -> list[str]:
    """Recover running jobs whose worker is gone: back to the queue, or failed `worker_lost`."""
    cutoff = utcnow() - timedelta(seconds=stale_after)
    running = session.scalars(select(Job).where(Job.status == JobStatus.RUNNING)).all()
    recovered = []
    for job in running:
        beat = job.heartbeat_at or job.started_at
        silent = beat is None or beat < cutoff
        if not (silent or _process_is_gone(job.worker_id)):
            continue
        lost_worker = job.worker_id
        job.worker_id = None
        if job.attempts < max_attempts and not job.cancel_requested:
            job.status = JobStatus.QUEUED
            session.flush()
            add_event(
                session,
                job.id,
                EventType.WARNING,
                f"worker {lost_worker} stopped without finishing the job; it goes back "
                f"to the queue (attempt {job.attempts} of {max_attempts} used)",
                {"status": JobStatus.QUEUED, "worker": lost_worker},
            )
        else:
            job.status = JobStatus.CANCELLED if job.cancel_requested else JobStatus.FAILED
            job.finished_at = utcnow()
            if job.status == JobStatus.FAILED:
                job.error_code = "worker_lost"
                job.error_message = (
                    f"the worker running this job ({lost_worker}) stopped without finishing it, "
                    f"{job.attempts} time(s); giving up after {max_attempts} attempt(s)"
                )
            session.flush()
            add_event(
                session,
                job.id,
                EventType.STATUS,
                job.error_message or "job cancelled",
                {"status": job.status, "code": job.error_code},
            )
        log.warning("recovered job %s from lost worker %s -> %s", job.id, lost_worker, job.status)
        recovered.append(job.id)
    return recovered


def queued_among(session: Session, job_ids: list[str]) -> list[str]:
    """Those of `job_ids` that wait in the queue now, oldest first."""
    if not job_ids:
        return []
    query = select(Job.id).where(Job.id.in_(job_ids), Job.status == JobStatus.QUEUED)
    return list(session.scalars(query.order_by(Job.created_at, Job.id)))


def claim(session: Session, job_id: str, worker_id: str) -> bool:
    """Claim one named job if it is still queued (a broker message names its job)."""
    candidate = select(Job.id).where(Job.id == job_id, Job.status == JobStatus.QUEUED)
    if session.get_bind().dialect.name == "postgresql":
        candidate = candidate.with_for_update(skip_locked=True)
    if session.scalar(candidate) is None:
        return False
    return _mark_running(session, job_id, worker_id)


def queued_before(session: Session, *, seconds_ago: float, limit: int = 500) -> list[str]:
    """Ids of jobs queued at least `seconds_ago` ago, oldest first."""
    cutoff = utcnow() - timedelta(seconds=seconds_ago)
    query = select(Job.id).where(Job.status == JobStatus.QUEUED, Job.created_at < cutoff)
    return list(session.scalars(query.order_by(Job.created_at, Job.id).limit(limit)))


@dataclass
class PruneCursor:
    """Where a walk over ended jobs has got to, in the order they ended: the next call of
    `prune_events` starts after this job."""

    finished_at: datetime | None = None
    job_id: str = ""


def prune_events(
    session: Session,
    *,
    older_than_days: float,
    limit: int | None = None,
    cursor: PruneCursor | None = None,
) -> int:
    """Delete the metrics, log and warning events of jobs that ended over `older_than_days`
    ago; their status events (queued, running, how it ended) stay, as does the job. Covers
    the first `limit` such jobs (all without a limit) in the order they ended, after
    `cursor`, which it moves past them: so a prune in batches reads each job once, not the
    jobs earlier batches already stripped again. Returns how many jobs it covered."""
    cutoff = utcnow() - timedelta(days=older_than_days)
    ended = select(Job.finished_at, Job.id).where(Job.finished_at < cutoff)
    if cursor is not None and cursor.finished_at is not None:
        ended = ended.where(
            or_(
                Job.finished_at > cursor.finished_at,
                and_(Job.finished_at == cursor.finished_at, Job.id > cursor.job_id),
            )
        )
    ended = ended.order_by(Job.finished_at, Job.id)
    if limit is not None:
        ended = ended.limit(limit)
    jobs = session.execute(ended).all()
    if not jobs:
        return 0
    session.execute(
        delete(JobEvent).where(
            JobEvent.job_id.in_([job_id for _, job_id in jobs]), JobEvent.type != EventType.STATUS
        )
    )
    if cursor is not None:
        cursor.finished_at, cursor.job_id = jobs[-1]
    return len(jobs)


_FINAL = tuple(status for status in JobStatus if status.is_final)


def prune_jobs(session: Session, *, older_than_days: float, limit: int) -> int:
    """Delete at most `limit` jobs that ended over `older_than_days` ago, with their events.

    Versions keep their `job_id` and lineage (plain columns, no foreign key), so the
    registry's history outlives the job records."""
    cutoff = utcnow() - timedelta(days=older_than_days)
    ids = list(
        session.scalars(
            select(Job.id)
            .where(Job.finished_at < cutoff, Job.status.in_(_FINAL))
            .order_by(Job.finished_at)
            .limit(limit)
        )
    )
    if not ids:
        return 0
    session.execute(delete(JobEvent).where(JobEvent.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)))
    return len(ids)
