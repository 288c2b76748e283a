"""Job use cases: validate and submit, read, list, cancel, read events."""

import hashlib
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.base import Base
from app.db.models import (
    ApiKey,
    Dataset,
    Job,
    JobEvent,
    JobTally,
    ModelVersion,
    WebhookDelivery,
)
from app.db.session import Database
from app.enums import EventType, JobKind, JobStatus, Task
from app.errors import Conflict, Invalid, NotFound, TooManyRequests
from app.ids import new_id, utcnow
from app.ml.transfer import registry as strategies
from app.schemas.jobs import (
    BatchPredictionCreate,
    EvaluationCreate,
    FineTuningCreate,
    SourceTrainingCreate,
)
from app.services import datasets as datasets_service
from app.services import image_jobs, metadata, work_estimate
from app.services import registry as registry_service
from app.services.job_events import add_event
from app.services.locking import lock_rows, needs_row_locks
from app.services.pagination import paginate

_NUMERIC_DTYPES = {"int64", "float64", "bool"}
# Cross-validation (strategy auto, target_normalization auto) needs two folds of two rows.
MIN_CV_ROWS = 4
_FEATURE_DTYPES = _NUMERIC_DTYPES | {"string", "category"}


def _columns(dataset: Dataset) -> dict[str, str]:
    return {column["name"]: column["dtype"] for column in dataset.columns}


def _names(names: list[str], limit: int = 20) -> str:
    """A list for a detail message, cut short: a request may name thousands of columns."""
    shown = repr(names[:limit])
    return shown if len(names) <= limit else f"{shown[:-1]}, ... ({len(names):,} in all)]"


def _require_target(dataset: Dataset, target: str, columns: dict[str, str]) -> None:
    if target not in columns:
        raise Invalid(
            "column_not_found",
            f"target column {target!r} is not in dataset {dataset.id}; "
            f"its columns are {_names(list(columns))}",
        )


def _check_source_request(dataset: Dataset, request: SourceTrainingCreate) -> None:
    columns = _columns(dataset)
    _require_target(dataset, request.target_column, columns)
    features = request.feature_columns or [c for c in columns if c != request.target_column]
    missing = [c for c in features if c not in columns]
    if missing:
        raise Invalid(
            "column_not_found",
            f"feature column(s) {_names(missing)} are not in dataset {dataset.id}; "
            f"its columns are {_names(list(columns))}",
        )
    if request.target_column in features:
        raise Invalid(
            "invalid_feature_columns",
            f"the target column {request.target_column!r} cannot also be a feature",
        )
    duplicated = sorted(c for c, n in Counter(features).items() if n > 1)
    if duplicated:
        raise Invalid("invalid_feature_columns", f"feature column(s) {_names(duplicated)} repeated")
    if not features:
        raise Invalid("invalid_feature_columns", "the dataset has no column besides the target")
    unusable = [f"{c} ({columns[c]})" for c in features if columns[c] not in _FEATURE_DTYPES]
    if unusable:
        raise Invalid(
            "unsupported_dtype",
            f"feature column(s) {unusable} have a type Graft cannot use; expected numbers, "
            "booleans or categories (strings)",
        )
    target_dtype = columns[request.target_column]
    if request.task == Task.REGRESSION and target_dtype not in _NUMERIC_DTYPES:
        raise Invalid(
            "invalid_target",
            f"task is regression but target column {request.target_column!r} holds "
            f"{target_dtype} values; expected numbers",
        )
    if dataset.rows < 2:
        raise Invalid("dataset_too_small", f"dataset {dataset.id} has {dataset.rows} row(s)")


def _check_fine_tuning_request(
    dataset: Dataset, request: FineTuningCreate, base: ModelVersion
) -> None:
    columns = _columns(dataset)
    _require_target(dataset, request.target_column, columns)
    expected = base.signature["inputs"]
    names = [column["name"] for column in expected]
    missing = [name for name in names if name not in columns]
    if missing:
        raise Invalid(
            "feature_mismatch",
            f"{base.model_name} version {base.version} expects {len(names)} features "
            f"{_names(names)}; dataset {dataset.id} lacks {_names(missing)}",
        )
    wrong_type = [
        f"{column['name']} (model: {column['dtype']}, dataset: {columns[column['name']]})"
        for column in expected
        if (column["dtype"] in _NUMERIC_DTYPES) != (columns[column["name"]] in _NUMERIC_DTYPES)
    ]
    if wrong_type:
        raise Invalid(
            "feature_mismatch",
            f"feature types differ from {base.model_name} version {base.version}: "
            f"{_names(wrong_type)}",
        )
    if request.target_column in names:
        raise Invalid(
            "invalid_target",
            f"{request.target_column!r} is an input of the base model, so it cannot be the target",
        )
    if base.task == Task.REGRESSION and columns[request.target_column] not in _NUMERIC_DTYPES:
        raise Invalid(
            "target_mismatch",
            f"the base model does regression but target column {request.target_column!r} "
            f"holds {columns[request.target_column]} values; expected numbers",
        )


def _check_joint_source(session: Session, base: ModelVersion) -> Dataset:
    """`joint` trains on the base's own training rows: they must still be there and usable
    (and `queue` holds the row until the job is committed)."""
    source = session.scalar(select(Dataset).where(Dataset.id == base.dataset_id))
    if source is None:
        raise Conflict(
            "source_dataset_unavailable",
            f"strategy joint trains on the rows {base.model_name} version {base.version} was "
            f"trained on, dataset {base.dataset_id}, which no longer exists; choose another "
            "strategy",
        )
    columns = _columns(source)
    needed = [column["name"] for column in base.signature["inputs"]] + [base.signature["target"]]
    missing = [name for name in needed if name not in columns]
    if missing:
        raise Invalid(
            "source_dataset_mismatch",
            f"strategy joint needs columns {_names(needed)} in the source dataset {source.id}; "
            f"it lacks {_names(missing)}",
        )
    return source


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


def _check_quotas(session: Session, caller: Caller) -> None:
    """429 when the caller's key has too many jobs waiting or running, or the queue is full.

    Both counts come from the job tallies (a few rows, whatever the limits). On PostgreSQL
    the key's row is locked first, so two submissions of one key count one after the other
    (SQLite writers run one at a time anyway). The queue bound is not serialised: it may be
    passed by as many submissions as are committing at the same moment.
    """
    own = f"active:{caller.key_id}"
    if caller.key_id is not None and needs_row_locks(session):
        session.execute(lock_rows(select(ApiKey.id).where(ApiKey.id == caller.key_id), "update"))
    names = ["queued"] if caller.key_id is None else ["queued", own]
    tallies = {
        name: int(total or 0)
        for name, total in session.execute(
            select(JobTally.name, func.sum(JobTally.jobs))
            .where(JobTally.name.in_(names))
            .group_by(JobTally.name)
        )
    }
    active = tallies.get(own, 0)
    if caller.key_id is not None and active >= caller.max_active_jobs:
        raise TooManyRequests(
            "too_many_active_jobs",
            f"API key {caller.key_id} has {active} queued or running jobs, the most one key "
            f"may have (GRAFT_MAX_ACTIVE_JOBS_PER_KEY={caller.max_active_jobs}); wait for "
            "one to end or cancel one",
            retry_after=_RETRY_AFTER_SECONDS,
        )
    queued = tallies.get("queued", 0)
    if queued >= caller.max_queued_jobs:
        raise TooManyRequests(
            "queue_full",
            f"{queued} jobs are waiting, as many as the server queues "
            f"(GRAFT_MAX_QUEUED_JOBS={caller.max_queued_jobs}); retry later",
            retry_after=_RETRY_AFTER_SECONDS,
        )


def _replay(session: Session, key: str, digest: str, caller: Caller) -> Job | None:
    existing = session.scalar(select(Job).where(Job.idempotency_key == key))
    if existing is None:
        return None
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


@dataclass(frozen=True)
class JobDraft:
    """A job request checked against the rows it names, not yet written.

    Drafting only reads, so the API does it before its write transaction begins (on SQLite
    the write lock is then held for the few statements of `queue` alone); `queue` checks
    again, under share locks, that the rows it relies on are still there.
    """

    kind: JobKind
    body: dict[str, Any]
    dataset_id: str
    model_name: str
    base_model_name: str | None = None
    base_model_version: int | None = None
    # The base's training dataset, which a `joint` fine-tune reads too.
    source_dataset_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    webhook_url: str | None = None
    # What GET /v1/jobs/{id} shows while the job waits.
    progress: dict[str, Any] = field(default_factory=dict)


def _epochs(request: SourceTrainingCreate | FineTuningCreate) -> dict[str, Any]:
    return {"epoch": 0, "epochs": request.hyperparameters.epochs}


def draft_source_training(
    session: Session, request: SourceTrainingCreate, limits: work_estimate.Limits | None = None
) -> JobDraft:
    """Validate what can be checked now: columns, dtypes, architecture, the work limits."""
    dataset = datasets_service.get(session, request.dataset_id)
    request = image_jobs.check_source_request(dataset, request)
    if image_jobs.dataset_image_shape(dataset) is None:
        _check_source_request(dataset, request)
    estimate = work_estimate.source_training(request, dataset.columns, dataset.rows)
    work_estimate.check(estimate, limits or work_estimate.Limits())
    return JobDraft(
        kind=JobKind.SOURCE_TRAINING,
        body=request.model_dump(mode="json"),
        dataset_id=dataset.id,
        model_name=request.model_name,
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress=_epochs(request),
    )


def draft_fine_tuning(
    session: Session, request: FineTuningCreate, limits: work_estimate.Limits | None = None
) -> JobDraft:
    """Resolve and pin the base version (an alias is read now), validate the target data."""
    ref = request.base_model
    base = registry_service.resolve(session, ref.name, version=ref.version, alias=ref.alias)
    dataset = datasets_service.get(session, request.dataset_id)
    if image_jobs.dataset_image_shape(dataset) or image_jobs.model_image_shape(base):
        image_jobs.check_fine_tuning_request(dataset, request, base)
    else:
        _check_fine_tuning_request(dataset, request, base)
    source_rows = None
    needs_source = strategies.needs_source_rows(request.strategy)
    if needs_source:
        source_rows = _check_joint_source(session, base).rows
    elif request.strategy == strategies.AUTO:  # auto adds joint while the source rows exist
        source_rows = session.scalar(select(Dataset.rows).where(Dataset.id == base.dataset_id))
    chooses = request.strategy == strategies.AUTO or request.target_normalization == "auto"
    if chooses and dataset.rows < MIN_CV_ROWS:
        raise Invalid(
            "dataset_too_small",
            f"strategy auto and target_normalization auto choose by cross-validation, which "
            f"needs at least {MIN_CV_ROWS} target rows; dataset {dataset.id} has {dataset.rows}",
        )
    estimate = work_estimate.fine_tuning(
        request, base.architecture, base.task, dataset.rows, source_rows
    )
    work_estimate.check(estimate, limits or work_estimate.Limits())
    return JobDraft(
        kind=JobKind.FINE_TUNING,
        body=request.model_dump(mode="json"),
        dataset_id=dataset.id,
        model_name=request.model_name,
        base_model_name=base.model_name,
        base_model_version=base.version,
        source_dataset_id=base.dataset_id if needs_source else None,
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress=_epochs(request),
    )


def _table_dataset(dataset: Dataset, what: str) -> None:
    if image_jobs.dataset_image_shape(dataset) is not None:
        raise Invalid(
            "unsupported_dataset",
            f"{what} reads tables (CSV, Parquet, JSON Lines); dataset {dataset.id} holds images",
        )


def _check_inputs(dataset: Dataset, version: ModelVersion, columns: dict[str, str]) -> None:
    """The version's inputs are columns of the dataset, numbers where it reads numbers."""
    if image_jobs.model_image_shape(version) is not None:
        raise Invalid(
            "unsupported_model",
            f"{version.model_name} version {version.version} reads images; batch prediction "
            "and evaluation read tables",
        )
    expected = version.signature["inputs"]
    names = [column["name"] for column in expected]
    missing = [name for name in names if name not in columns]
    if missing:
        raise Invalid(
            "feature_mismatch",
            f"{version.model_name} version {version.version} reads {len(names)} features "
            f"{_names(names)}; dataset {dataset.id} lacks {_names(missing)}",
        )
    wrong_type = [
        f"{column['name']} (model: {column['dtype']}, dataset: {columns[column['name']]})"
        for column in expected
        if column["dtype"] in _NUMERIC_DTYPES and columns[column["name"]] not in _NUMERIC_DTYPES
    ]
    if wrong_type:
        raise Invalid(
            "feature_mismatch",
            f"{version.model_name} version {version.version} reads numbers where dataset "
            f"{dataset.id} holds text: {_names(wrong_type)}",
        )


# The result's own columns; an id column may not take one of these names.
PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"


def draft_batch_prediction(session: Session, request: BatchPredictionCreate) -> JobDraft:
    """Pin the version, check the dataset holds its inputs and the id columns, and name
    the result dataset."""
    ref = request.model
    version = registry_service.resolve(session, ref.name, version=ref.version, alias=ref.alias)
    dataset = datasets_service.get(session, request.dataset_id)
    _table_dataset(dataset, "batch prediction")
    columns = _columns(dataset)
    _check_inputs(dataset, version, columns)
    missing = [name for name in request.id_columns if name not in columns]
    if missing:
        raise Invalid(
            "column_not_found",
            f"id column(s) {_names(missing)} are not in dataset {dataset.id}; its columns are "
            f"{_names(list(columns))}",
        )
    duplicated = sorted(c for c, n in Counter(request.id_columns).items() if n > 1)
    if duplicated:
        raise Invalid("invalid_id_columns", f"id column(s) {_names(duplicated)} repeated")
    clashing = [
        name
        for name in request.id_columns
        if name == PREDICTION_COLUMN or name.startswith(PROBABILITY_PREFIX)
    ]
    if clashing:
        raise Invalid(
            "invalid_id_columns",
            f"id column(s) {_names(clashing)} would clash with the result's own columns "
            f"({PREDICTION_COLUMN!r}, {PROBABILITY_PREFIX}<class>); copy them under another "
            "name first",
        )
    body = request.model_dump(mode="json")
    if body["result_name"] is None:
        body["result_name"] = (
            f"{dataset.name} predictions ({version.model_name} v{version.version})"
        )[:200]
    return JobDraft(
        kind=JobKind.BATCH_PREDICTION,
        body=body,
        dataset_id=dataset.id,
        model_name=version.model_name,
        base_model_name=version.model_name,
        base_model_version=version.version,
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress={"rows_done": 0, "rows_total": dataset.rows},
    )


def draft_evaluation(session: Session, request: EvaluationCreate) -> JobDraft:
    """Pin every version (and with include_base their bases), check the dataset holds each
    one's inputs and a usable target column."""
    dataset = datasets_service.get(session, request.dataset_id)
    _table_dataset(dataset, "evaluation")
    columns = _columns(dataset)
    versions: list[ModelVersion] = []
    for ref in request.models:
        versions.append(
            registry_service.resolve(session, ref.name, version=ref.version, alias=ref.alias)
        )
    if request.include_base:
        for version in list(versions):
            if version.parent_name is None or version.parent_version is None:
                continue
            base = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_name == version.parent_name,
                    ModelVersion.version == version.parent_version,
                )
            )
            if base is not None:  # a deleted base is left out; the job's log says so
                versions.append(base)
    pinned: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for version in versions:
        if (version.model_name, version.version) in seen:
            continue
        seen.add((version.model_name, version.version))
        _check_inputs(dataset, version, columns)
        target = request.target_column or version.signature.get("target")
        if not target or target not in columns:
            raise Invalid(
                "column_not_found",
                f"target column {target!r} of {version.model_name} version {version.version} "
                f"is not in dataset {dataset.id}; name the labels with target_column (its "
                f"columns are {_names(list(columns))})",
            )
        if version.task == Task.REGRESSION and columns[target] not in _NUMERIC_DTYPES:
            raise Invalid(
                "target_mismatch",
                f"{version.model_name} version {version.version} does regression but column "
                f"{target!r} holds {columns[target]} values; expected numbers",
            )
        pinned.append({"name": version.model_name, "version": version.version, "target": target})
    body = {**request.model_dump(mode="json"), "pinned": pinned}
    first = pinned[0]
    return JobDraft(
        kind=JobKind.EVALUATION,
        body=body,
        dataset_id=dataset.id,
        model_name=first["name"],
        base_model_name=first["name"],
        base_model_version=first["version"],
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress={"rows_done": 0, "rows_total": dataset.rows},
    )


def _hold(session: Session, draft: JobDraft) -> None:
    """The rows the draft was checked against, still there and held (shared) until commit,
    so a concurrent delete of any of them waits for this job and then refuses."""
    shared = needs_row_locks(session)

    def exists(query: Any) -> bool:
        return session.scalar(lock_rows(query, "share") if shared else query) is not None

    if not exists(select(Dataset.id).where(Dataset.id == draft.dataset_id)):
        raise NotFound("dataset_not_found", f"no dataset with id {draft.dataset_id!r}")
    if draft.base_model_name is not None and draft.base_model_version is not None:
        name, number = draft.base_model_name, draft.base_model_version
        version = select(ModelVersion.id).where(
            ModelVersion.model_name == name, ModelVersion.version == number
        )
        if not exists(version):
            raise NotFound("version_not_found", f"model {name!r} has no version {number}")
    if draft.source_dataset_id is not None and not exists(
        select(Dataset.id).where(Dataset.id == draft.source_dataset_id)
    ):
        raise Conflict(
            "source_dataset_unavailable",
            f"strategy joint trains on the rows {draft.base_model_name} version "
            f"{draft.base_model_version} was trained on, dataset {draft.source_dataset_id}, "
            "which no longer exists; choose another strategy",
        )


_JOBS = Base.metadata.tables["jobs"]
_EVENTS = Base.metadata.tables["job_events"]


def queue(
    session: Session, draft: JobDraft, idempotency_key: str | None, caller: Caller
) -> tuple[Job, bool]:
    """Write a drafted job (or find the one its Idempotency-Key made) in the caller's
    transaction. Returns the job and whether it was created (False for a replay)."""
    _hold(session, draft)
    digest = _request_hash(draft.kind, draft.body)
    if idempotency_key is not None:
        replayed = _replay(session, idempotency_key, digest, caller)
        if replayed is not None:
            return replayed, False
    _check_quotas(session, caller)
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


def submit(
    database: Database,
    draft: Callable[[Session], JobDraft],
    idempotency_key: str | None = None,
    caller: Caller | None = None,
) -> tuple[Job, bool]:
    """Draft a job in a read-only session, then queue it in a short write transaction,
    committed before this returns."""
    with database.read_scope() as session:
        drafted = draft(session)
    with database.session_scope() as session:
        return queue(session, drafted, idempotency_key, caller or Caller())


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
