"""Job use cases: queue a drafted job (quotas, idempotency), read, list, cancel, delete,
and read its events. What a request is checked against lives in job_drafts and
row_job_drafts.

Longer than most modules because the queue's write path (`queue`: share locks, tallies,
idempotent replays, Core inserts) is one transaction's story and reads best in one place.
"""

import hashlib
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, func, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import Base
from app.db.models import (
    Dataset,
    Job,
    JobEvent,
    ModelVersion,
    WebhookDelivery,
)
from app.db.session import Database
from app.enums import EventType, JobKind, JobStatus
from app.errors import AppError, Conflict, Invalid, NotFound, TooManyRequests
from app.ids import new_id, utcnow
from app.schemas.jobs import (
    FineTuningCreate,
    SourceTrainingCreate,
)
from app.services import metadata, work_estimate
from app.services.job_drafts import JobDraft, draft_fine_tuning, draft_source_training
from app.services.job_events import add_event
from app.services.locking import lock_rows, needs_row_locks
from app.services.pagination import paginate


def _request_hash(kind: JobKind, body: dict[str, Any]) -> str:
    canonical = json.dumps({"kind": kind, "body": body}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Caller:
    """Who submits a job, and the quotas that apply to it (from Settings)."""

    key_id: str | None = None
    max_active_jobs: int = 20
    max_queued_jobs: int = 1000

    @classmethod
    def from_settings(cls, key_id: str | None, settings: Settings) -> "Caller":
        return cls(key_id, settings.max_active_jobs_per_key, settings.max_queued_jobs)


# A full queue drains at the pace of training: retrying sooner than this only adds load.
_RETRY_AFTER_SECONDS = 30


def _refuse_over_quota(caller: Caller, active: int, queued: int) -> None:
    """429 when the caller's key has too many jobs waiting or running, or the queue is full."""
    if caller.key_id is not None and active >= caller.max_active_jobs:
        raise TooManyRequests(
            "too_many_active_jobs",
            f"API key {caller.key_id} has {active} queued or running jobs, the most one key "
            f"may have (GRAFT_MAX_ACTIVE_JOBS_PER_KEY={caller.max_active_jobs}); wait for "
            "one to end or cancel one",
            retry_after=_RETRY_AFTER_SECONDS,
        )
    if queued >= caller.max_queued_jobs:
        raise TooManyRequests(
            "queue_full",
            f"{queued} jobs are waiting, as many as the server queues "
            f"(GRAFT_MAX_QUEUED_JOBS={caller.max_queued_jobs}); retry later",
            retry_after=_RETRY_AFTER_SECONDS,
        )


def _active_tally(key_id: str) -> str:
    return f"active:{key_id}"


def _read_tallies(session: Session, names: Collection[str]) -> dict[str, int]:
    """The job counts by tally name (summed over their slots); a missing name counts 0."""
    counts = dict.fromkeys(names, 0)
    for name, total in session.execute(_TALLIES, {"names": list(names)}):
        counts[name] = int(total or 0)
    return counts


def _lock_keys(session: Session, key_ids: Collection[str]) -> None:
    """Hold the callers' key rows (PostgreSQL), in one order so that two writers never wait
    on each other's keys in a cycle: submissions of one key then count one after the other."""
    if key_ids and needs_row_locks(session):
        session.execute(_LOCK_KEYS, {"ids": sorted(key_ids)})


def _check_quotas(session: Session, caller: Caller) -> None:
    """429 when the caller's key has too many jobs waiting or running, or the queue is full.

    Both counts come from the job tallies (a few rows, whatever the limits). On PostgreSQL
    the key's row is locked first, so two submissions of one key count one after the other
    (SQLite writers run one at a time anyway). The queue bound is not serialised: it may be
    passed by as many submissions as are committing at the same moment.
    """
    if caller.key_id is None:
        counts = _read_tallies(session, ["queued"])
        _refuse_over_quota(caller, 0, counts["queued"])
        return
    _lock_keys(session, [caller.key_id])
    own = _active_tally(caller.key_id)
    counts = _read_tallies(session, ["queued", own])
    _refuse_over_quota(caller, counts[own], counts["queued"])


def _replayable(existing: Job, key: str, digest: str, caller: Caller) -> Job:
    """The job an Idempotency-Key already made, if this caller may have it back for this
    request; 422 if another key made it or it answered a different request."""
    if existing.created_by != caller.key_id:
        # Another API key's job: neither replay it nor say which job it is.
        raise Invalid(
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was already used by another API key; use a new key",
        )
    if existing.request_hash != digest:
        raise Invalid(
            "idempotency_key_reused",
            f"Idempotency-Key {key!r} was used for a different request (job {existing.id}); "
            "use a new key for a new job",
        )
    return existing


def _replay(session: Session, key: str, digest: str, caller: Caller) -> Job | None:
    existing = session.scalar(select(Job).where(Job.idempotency_key == key))
    return None if existing is None else _replayable(existing, key, digest, caller)


def _missing_row(draft: JobDraft, datasets: Collection[str], versions: Collection[Any]) -> None:
    """404 or 409 if a row the draft was checked against is no longer among those present."""
    if draft.dataset_id not in datasets:
        raise NotFound("dataset_not_found", f"no dataset with id {draft.dataset_id!r}")
    if draft.base_model_name is not None and draft.base_model_version is not None:
        name, number = draft.base_model_name, draft.base_model_version
        if (name, number) not in versions:
            raise NotFound("version_not_found", f"model {name!r} has no version {number}")
    if draft.source_dataset_id is not None and draft.source_dataset_id not in datasets:
        raise Conflict(
            "source_dataset_unavailable",
            f"strategy joint trains on the rows {draft.base_model_name} version "
            f"{draft.base_model_version} was trained on, dataset {draft.source_dataset_id}, "
            "which no longer exists; choose another strategy",
        )


def _hold(session: Session, drafts: Sequence[JobDraft]) -> tuple[set[str], set[Any]]:
    """Which of the rows the drafts were checked against are still there: datasets by id,
    versions as (model name, version). On PostgreSQL those found are held (shared) until
    commit, so a concurrent delete of any of them waits for these jobs and then refuses."""
    shared = needs_row_locks(session)
    dataset_ids = {d.dataset_id for d in drafts} | {
        d.source_dataset_id for d in drafts if d.source_dataset_id is not None
    }
    datasets_query = select(Dataset.id).where(Dataset.id.in_(sorted(dataset_ids)))
    datasets = set(
        session.scalars(lock_rows(datasets_query, "share") if shared else datasets_query)
    )
    wanted = {
        (d.base_model_name, d.base_model_version)
        for d in drafts
        if d.base_model_name is not None and d.base_model_version is not None
    }
    versions: set[Any] = set()
    if wanted:
        versions_query = select(ModelVersion.model_name, ModelVersion.version).where(
            tuple_(ModelVersion.model_name, ModelVersion.version).in_(sorted(wanted))
        )
        found = session.execute(lock_rows(versions_query, "share") if shared else versions_query)
        versions = {(name, number) for name, number in found}
    return datasets, versions


_JOBS = Base.metadata.tables["jobs"]
_EVENTS = Base.metadata.tables["job_events"]
_TALLIES_TABLE = Base.metadata.tables["job_tallies"]
# Built once: a statement's cache key is then computed once, not per submission.
_TALLIES = (
    select(_TALLIES_TABLE.c.name, func.sum(_TALLIES_TABLE.c.jobs))
    .where(_TALLIES_TABLE.c.name.in_(bindparam("names", expanding=True)))
    .group_by(_TALLIES_TABLE.c.name)
)
_KEYS_TABLE = Base.metadata.tables["api_keys"]
_LOCK_KEYS = (
    select(_KEYS_TABLE.c.id)
    .where(_KEYS_TABLE.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(_KEYS_TABLE.c.id)
    .with_for_update()
)


def _new_job(
    draft: JobDraft, idempotency_key: str | None, caller: Caller, digest: str
) -> tuple[Job, dict[str, Any], dict[str, Any]]:
    """A queued job for the draft, its row and its first event's row."""
    now = utcnow()
    job = Job(
        id=new_id("job"),
        kind=draft.kind,
        status=JobStatus.QUEUED,
        created_at=now,
        started_at=None,
        finished_at=None,
        request=draft.body,
        dataset_id=draft.dataset_id,
        source_dataset_id=draft.source_dataset_id,
        model_name=draft.model_name,
        base_model_name=draft.base_model_name,
        base_model_version=draft.base_model_version,
        progress=dict(draft.progress),
        metrics=None,
        result_model_name=None,
        result_version=None,
        result_dataset_id=None,
        error_code=None,
        error_message=None,
        cancel_requested=False,
        attempts=0,
        worker_id=None,
        heartbeat_at=None,
        idempotency_key=idempotency_key,
        request_hash=digest,
        # Its first event is written with it: the sequence starts after it.
        next_event_seq=2,
        created_by=caller.key_id,
        tags=dict(draft.tags),
        description=draft.description,
        webhook_url=draft.webhook_url,
    )
    # Core inserts, not the unit of work: on SQLite they run under the write lock, and the
    # job handed back is only read (for the response).
    values = {column.key: getattr(job, column.key) for column in _JOBS.columns}
    queued = {
        "job_id": job.id,
        "seq": 1,
        "created_at": now,
        "type": EventType.STATUS,
        "message": "job queued",
        "data": {"status": JobStatus.QUEUED},
    }
    return job, values, queued


def queue(
    session: Session, draft: JobDraft, idempotency_key: str | None, caller: Caller
) -> tuple[Job, bool]:
    """Write a drafted job (or find the one its Idempotency-Key made) in the caller's
    transaction. Returns the job and whether it was created (False for a replay)."""
    _missing_row(draft, *_hold(session, [draft]))
    digest = _request_hash(draft.kind, draft.body)
    if idempotency_key is not None:
        replayed = _replay(session, idempotency_key, digest, caller)
        if replayed is not None:
            return replayed, False
    _check_quotas(session, caller)
    job, values, queued = _new_job(draft, idempotency_key, caller, digest)
    if idempotency_key is None:
        session.execute(_JOBS.insert(), values)
        session.execute(_EVENTS.insert(), queued)
        return job, True
    try:
        with session.begin_nested():
            session.execute(_JOBS.insert(), values)
    except IntegrityError:
        # Another request with the same key won the race; hand back its job.
        replayed = _replay(session, idempotency_key, digest, caller)
        if replayed is None:
            raise
        return replayed, False
    session.execute(_EVENTS.insert(), queued)
    return job, True


@dataclass(frozen=True)
class Submission:
    """A drafted job waiting for its write."""

    draft: JobDraft
    idempotency_key: str | None
    caller: Caller


def queue_group(
    session: Session, submissions: Sequence[Submission]
) -> list[tuple[Job, bool] | Exception]:
    """Queue several drafted jobs in one transaction with the same outcome, for each, as
    `queue` one after the other: each sees the jobs queued before it in the group (its
    quota counts them, its Idempotency-Key may replay one of them). A refused one (a row it
    relies on gone, its quota reached, its Idempotency-Key reused) writes nothing and does
    not stop the others.

    The reads are made once for the group (rows held, tallies, earlier Idempotency-Keys) and
    the rows go in with one insert per table, so the transaction's statements do not grow
    with the group. A key that another transaction is inserting at this moment makes the
    insert fail; the group committer then writes each submission alone, through `queue`,
    which replays the winner's job.
    """
    if len(submissions) == 1:
        (alone,) = submissions
        try:
            return [queue(session, alone.draft, alone.idempotency_key, alone.caller)]
        except AppError as refused:
            return [refused]
    key_ids = {s.caller.key_id for s in submissions if s.caller.key_id is not None}
    _lock_keys(session, key_ids)
    datasets, versions = _hold(session, [s.draft for s in submissions])
    counts = _read_tallies(session, ["queued", *(_active_tally(k) for k in key_ids)])
    idempotency_keys = {s.idempotency_key for s in submissions if s.idempotency_key is not None}
    known: dict[str, Job] = {}
    if idempotency_keys:
        earlier = select(Job).where(Job.idempotency_key.in_(sorted(idempotency_keys)))
        known = {
            job.idempotency_key: job for job in session.scalars(earlier) if job.idempotency_key
        }
    outcomes: list[tuple[Job, bool] | Exception] = []
    jobs: list[dict[str, Any]] = []
    events: list[dict[str, Any]] = []
    for submission in submissions:
        draft, key, caller = submission.draft, submission.idempotency_key, submission.caller
        try:
            _missing_row(draft, datasets, versions)
            digest = _request_hash(draft.kind, draft.body)
            if key is not None and key in known:
                outcomes.append((_replayable(known[key], key, digest, caller), False))
                continue
            own = None if caller.key_id is None else _active_tally(caller.key_id)
            _refuse_over_quota(caller, counts.get(own, 0) if own else 0, counts["queued"])
        except AppError as refused:
            outcomes.append(refused)
            continue
        job, values, queued = _new_job(draft, key, caller, digest)
        # What the tallies' triggers will count once the row is in.
        counts["queued"] += 1
        if own is not None:
            counts[own] += 1
        if key is not None:
            known[key] = job
        jobs.append(values)
        events.append(queued)
        outcomes.append((job, True))
    if jobs:
        session.execute(_JOBS.insert(), jobs)
        session.execute(_EVENTS.insert(), events)
    return outcomes


def submit(
    database: Database,
    draft: Callable[[Session], JobDraft],
    idempotency_key: str | None = None,
    caller: Caller | None = None,
) -> tuple[Job, bool]:
    """Draft a job in a read-only session, then queue it in a short write transaction,
    committed before this returns. Submissions that arrive together share that transaction
    (group commit, app/db/group_commit.py): one writer's turn and one fsync for all."""
    with database.read_scope() as session:
        drafted = draft(session)
    write = database.group_commit(queue_group)
    return write(Submission(drafted, idempotency_key, caller or Caller()))


def submit_source_training(
    session: Session,
    request: SourceTrainingCreate,
    idempotency_key: str | None = None,
    limits: work_estimate.Limits | None = None,
    caller: Caller | None = None,
) -> tuple[Job, bool]:
    """Draft and queue a source-training job in the caller's one transaction."""
    draft = draft_source_training(session, request, limits)
    return queue(session, draft, idempotency_key, caller or Caller())


def submit_fine_tuning(
    session: Session,
    request: FineTuningCreate,
    idempotency_key: str | None = None,
    limits: work_estimate.Limits | None = None,
    caller: Caller | None = None,
) -> tuple[Job, bool]:
    """Draft and queue a fine-tuning job in the caller's one transaction."""
    draft = draft_fine_tuning(session, request, limits)
    return queue(session, draft, idempotency_key, caller or Caller())


def get(session: Session, job_id: str, *, for_update: bool = False) -> Job:
    """One job; `for_update` holds its row until the caller commits."""
    job = session.get(Job, job_id, with_for_update=for_update or None)
    if job is None:
        raise NotFound("job_not_found", f"no job with id {job_id!r}")
    return job


def list_jobs(
    session: Session,
    *,
    status: JobStatus | None,
    kind: JobKind | None,
    limit: int,
    after: str | None,
    tags: list[str] | None = None,
) -> tuple[list[Job], bool]:
    query = select(Job).where(*metadata.filters(Job.tags, tags or []))
    if status is not None:
        query = query.where(Job.status == status)
    if kind is not None:
        query = query.where(Job.kind == kind)
    return paginate(session, query, created_at=Job.created_at, key=Job.id, limit=limit, after=after)


def cancel(session: Session, job_id: str) -> Job:
    """Cancel a queued job now, or ask its worker to stop a running one at the next epoch.

    Each step is a conditional UPDATE on the job's status, so a worker claiming the job or
    recording its success at the same moment is never overruled: a 202 means the job will
    end cancelled without a version, a 409 job_finished that it had already ended.
    """
    now = utcnow()
    dropped = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED)
        .values(status=JobStatus.CANCELLED, finished_at=now, cancel_requested=True)
    )
    if _changed(dropped):
        add_event(
            session,
            job_id,
            EventType.STATUS,
            "job cancelled before it started",
            {"status": JobStatus.CANCELLED},
        )
        return _reread(session, job_id)
    asked = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING, Job.cancel_requested.is_(False))
        .values(cancel_requested=True)
    )
    if _changed(asked):
        add_event(
            session,
            job_id,
            EventType.LOG,
            "cancellation requested; the worker stops at the end of the current epoch",
        )
    job = _reread(session, job_id)
    if JobStatus(job.status).is_final:
        raise Conflict("job_finished", f"job {job_id} already ended with status {job.status}")
    return job


def delete_job(session: Session, job_id: str) -> None:
    """Delete a finished job and its events; the versions it registered stay.

    One conditional DELETE decides: a job that is still queued or running (or that a worker
    claims at this moment) is not removed, and the answer is 409.
    """
    final = [status for status in JobStatus if status.is_final]
    removed = session.execute(delete(Job).where(Job.id == job_id, Job.status.in_(final)))
    if _changed(removed):
        return
    job = get(session, job_id)
    raise Conflict(
        "job_active",
        f"job {job_id} is {job.status}; cancel it and wait until it has ended before deleting",
    )


def _changed(result: Any) -> bool:
    return bool(result.rowcount == 1)


def _reread(session: Session, job_id: str) -> Job:
    """The job as committed now (the UPDATEs above bypass the identity map)."""
    job = session.scalar(
        select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
    )
    if job is None:
        raise NotFound("job_not_found", f"no job with id {job_id!r}")
    return job


def webhook_deliveries(session: Session, job_id: str) -> list[WebhookDelivery]:
    """A job's webhook deliveries with their attempts, oldest first."""
    query = select(WebhookDelivery).where(WebhookDelivery.job_id == job_id)
    return list(session.scalars(query.order_by(WebhookDelivery.id)))


def list_events(
    session: Session, job_id: str, *, after: int | None, limit: int
) -> tuple[list[JobEvent], bool]:
    get(session, job_id)
    query = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        query = query.where(JobEvent.seq > after)
    rows = list(session.scalars(query.order_by(JobEvent.seq).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
