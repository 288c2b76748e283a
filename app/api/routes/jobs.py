"""/v1/jobs: submit every kind of job, read, list, patch, cancel and delete them, and their
events as pages or a live stream.

One resource's routes in one module, as every /v1 resource has; long because jobs have the
most operations (four kinds of submission and the event stream).
"""

import logging
from collections.abc import Callable
from datetime import datetime
from functools import partial
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from app.api.deps import (
    AfterQuery,
    KeyIdDep,
    LimitQuery,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    TagQuery,
)
from app.config import Settings
from app.enums import JobKind, JobStatus
from app.errors import Invalid
from app.ids import utcnow
from app.schemas.common import MAX_INT32, Page, problem_responses
from app.schemas.jobs import (
    BatchPredictionCreate,
    EvaluationCreate,
    EventRead,
    FineTuningCreate,
    JobRead,
    SourceTrainingCreate,
    WebhookDeliveryRead,
)
from app.schemas.metadata import MetadataPatch
from app.services import job_drafts, metadata, row_job_drafts, webhook_outbox
from app.services import jobs as jobs_service
from app.services.work_estimate import Limits

if TYPE_CHECKING:
    # Types only: the API reaches the ORM through the services.
    from app.db.models import Job


router = APIRouter(prefix="/jobs", tags=["jobs"])

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=200,
        description="Repeat a request with the same key to get the first job back.",
    ),
]


def _progress(job: "Job") -> dict[str, Any]:
    """Stored epoch counters plus times computed now, so they never go stale between epochs."""
    stored = job.progress or {}
    progress: dict[str, Any] = {"epoch": stored.get("epoch", 0), "epochs": stored.get("epochs", 0)}
    for counter in ("rows_done", "rows_total"):
        if counter in stored:
            progress[counter] = stored[counter]
    if job.started_at is None or job.status == JobStatus.QUEUED:
        return progress
    now = utcnow()
    end = job.finished_at or now
    progress["elapsed_seconds"] = round(max(0.0, (end - job.started_at).total_seconds()), 3)
    if JobStatus(job.status).is_final:
        progress["eta_seconds"] = 0.0
        progress["estimated_finish_at"] = job.finished_at
    elif job.status == JobStatus.RUNNING and stored.get("estimated_finish_at"):
        finish = datetime.fromisoformat(stored["estimated_finish_at"])
        progress["eta_seconds"] = round(max(0.0, (finish - now).total_seconds()), 3)
        progress["estimated_finish_at"] = finish
    return progress


def to_read(job: "Job") -> JobRead:
    result = None
    if job.result_model_name is not None and job.result_version is not None:
        result = {"model_name": job.result_model_name, "version": job.result_version}
    error = None
    if job.error_code is not None:
        error = {"code": job.error_code, "message": job.error_message or ""}
    return JobRead.model_validate(
        {
            "id": job.id,
            "kind": job.kind,
            "status": job.status,
            "created_at": job.created_at,
            "started_at": job.started_at,
            "finished_at": job.finished_at,
            "request": job.request,
            "progress": _progress(job),
            "metrics": job.metrics,
            "result": result,
            "error": error,
            "attempts": job.attempts,
            "cancel_requested": job.cancel_requested,
            "created_by": job.created_by,
            "tags": job.tags or {},
            "description": job.description,
            "webhook_url": job.webhook_url,
            # Set when the job is queued; the dataset exists only once the job succeeded.
            "result_dataset_id": job.result_dataset_id
            if job.status == JobStatus.SUCCEEDED
            else None,
            "base_model": None
            if job.base_model_name is None
            else {"name": job.base_model_name, "version": job.base_model_version},
        }
    )


log = logging.getLogger(__name__)


async def _submit(
    request: Request,
    draft: Callable[[Session], job_drafts.JobDraft],
    idempotency_key: str | None,
    key_id: str | None,
    webhook_url: str | None,
) -> Response:
    """Draft, queue and commit in one hop to a worker thread, then answer 202 with the job
    (an idempotent replay says so in a header). The response is the model's JSON, written once:
    FastAPI would validate the returned model a second time."""
    settings: Settings = request.app.state.settings
    _check_webhook(settings, webhook_url)
    job, created = await run_in_threadpool(
        jobs_service.submit,
        request.app.state.database,
        draft,
        idempotency_key,
        jobs_service.Caller.from_settings(key_id, settings),
    )
    headers = {"Location": f"/v1/jobs/{job.id}"}
    if created:
        # Committed above: the executor may start the job the moment it hears of it.
        dispatcher = request.app.state.dispatcher
        if dispatcher is not None:
            try:
                dispatcher.job_queued(job.id)
            except Exception:
                # The job is safely queued; pollers and the Celery workers' sweep find it.
                log.exception("could not hand job %s to the executor", job.id)
    else:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        to_read(job).model_dump_json(),
        status_code=status.HTTP_202_ACCEPTED,
        headers=headers,
        media_type="application/json",
    )


def _check_webhook(settings: Settings, url: str | None) -> None:
    if url is None:
        return
    if settings.webhook_secret is None:
        raise Invalid(
            "webhooks_not_configured",
            "this server signs no webhooks: GRAFT_WEBHOOK_SECRET is not set; leave out "
            "webhook_url or ask its operator",
        )
    try:
        webhook_outbox.check_url(url, allow_private=settings.webhook_allow_private, resolve=False)
    except webhook_outbox.UnsafeTarget as exc:
        raise Invalid("webhook_url_refused", str(exc)) from exc


@router.post(
    "/source-training",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Train a model on a source dataset",
    responses=problem_responses(404, 422),
)
async def create_source_training_job(
    settings: SettingsDep,
    key_id: KeyIdDep,
    request: Request,
    body: SourceTrainingCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a source-training job; a worker trains it and registers a new version."""
    limits = Limits.from_settings(settings)
    return await _submit(
        request,
        partial(job_drafts.draft_source_training, request=body, limits=limits),
        idempotency_key,
        key_id,
        body.webhook_url,
    )


@router.post(
    "/fine-tuning",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Fine-tune a model version on a target dataset",
    responses=problem_responses(404, 422),
)
async def create_fine_tuning_job(
    settings: SettingsDep,
    key_id: KeyIdDep,
    request: Request,
    body: FineTuningCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a fine-tuning job: a base version, a target dataset, a strategy (or auto)."""
    limits = Limits.from_settings(settings)
    return await _submit(
        request,
        partial(job_drafts.draft_fine_tuning, request=body, limits=limits),
        idempotency_key,
        key_id,
        body.webhook_url,
    )


@router.post(
    "/batch-prediction",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Predict every row of a stored dataset into a new dataset",
    responses=problem_responses(404, 409, 422),
)
async def create_batch_prediction_job(
    key_id: KeyIdDep,
    request: Request,
    body: BatchPredictionCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue a batch prediction: a worker streams the dataset through the version in chunks
    and writes the predictions (with the id columns) as a new dataset, `result_dataset_id`
    once the job has succeeded; download it from `/v1/datasets/{id}/content`."""
    return await _submit(
        request,
        partial(row_job_drafts.draft_batch_prediction, request=body),
        idempotency_key,
        key_id,
        body.webhook_url,
    )


@router.post(
    "/evaluation",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Score model versions on a labelled dataset",
    responses=problem_responses(404, 409, 422),
)
async def create_evaluation_job(
    key_id: KeyIdDep,
    request: Request,
    body: EvaluationCreate,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Queue an evaluation: every version (and with `include_base` each fine-tune's base) is
    scored on the dataset's rows (classification: accuracy, F1, log-loss, Brier, calibration,
    confusion matrix; regression: R², RMSE, MAE). The scores are stored with each version
    (`GET /v1/models/{name}/versions/{version}/evaluations`) and shown side by side by
    `GET /v1/models/{name}/compare`."""
    return await _submit(
        request,
        partial(row_job_drafts.draft_evaluation, request=body),
        idempotency_key,
        key_id,
        body.webhook_url,
    )


@router.get("", response_model=Page[JobRead], summary="List jobs")
def list_jobs(
    session: ReadSessionDep,
    status_filter: Annotated[JobStatus | None, Query(alias="status")] = None,
    kind: JobKind | None = None,
    limit: LimitQuery = 50,
    after: AfterQuery = None,
    tag: TagQuery = None,
) -> Page[JobRead]:
    """Jobs, newest first, optionally filtered by status, kind and tags."""
    rows, has_more = jobs_service.list_jobs(
        session, status=status_filter, kind=kind, limit=limit, after=after, tags=tag
    )
    return Page[JobRead](data=[to_read(job) for job in rows], has_more=has_more)


@router.get(
    "/{job_id}", response_model=JobRead, summary="Get a job", responses=problem_responses(404)
)
def get_job(session: ReadSessionDep, job_id: str) -> JobRead:
    """One job: status, progress, metrics, result or error (and its webhook deliveries)."""
    job = jobs_service.get(session, job_id)
    read = to_read(job)
    if job.webhook_url is not None:
        deliveries = jobs_service.webhook_deliveries(session, job_id)
        read.webhook_deliveries = [WebhookDeliveryRead.model_validate(d) for d in deliveries]
    return read


@router.patch(
    "/{job_id}",
    response_model=JobRead,
    summary="Change a job's tags or description",
    responses=problem_responses(404, 422),
)
def patch_job(session: SessionDep, job_id: str, body: MetadataPatch) -> JobRead:
    """A merge patch: tags set to null are removed, others added or replaced. The job's
    status, request and results are not touched (a worker may be running it)."""
    job = jobs_service.get(session, job_id, for_update=True)
    metadata.apply(job, body)
    session.flush()
    return to_read(job)


@router.post(
    "/{job_id}/cancel",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    summary="Cancel a job",
    responses=problem_responses(404, 409),
)
def cancel_job(session: SessionDep, job_id: str) -> JobRead:
    """Cancel a queued job at once, or a running one at the end of its current epoch."""
    return to_read(jobs_service.cancel(session, job_id))


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a finished job",
    responses=problem_responses(404, 409),
)
def delete_job(session: SessionDep, job_id: str) -> Response:
    """Delete a finished job and its events; the versions it registered stay (409 while
    the job is queued or running)."""
    jobs_service.delete_job(session, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


_EVENT_STREAM = "text/event-stream"


@router.get(
    "/{job_id}/events",
    response_model=Page[EventRead],
    summary="List or stream a job's events",
    responses={
        **problem_responses(404, 429),
        200: {
            "description": "A page of events (JSON), or with `Accept: text/event-stream` a "
            "live Server-Sent Events stream that ends after the job's final status event.",
            "content": {_EVENT_STREAM: {"schema": {"type": "string"}}},
        },
    },
)
def list_job_events(
    session: ReadSessionDep,
    request: Request,
    job_id: str,
    after: Annotated[
        int | None, Query(ge=0, le=MAX_INT32, description="Return events after this seq.")
    ] = None,
    limit: LimitQuery = 50,
    last_event_id: Annotated[
        int | None,
        Header(
            alias="Last-Event-ID",
            ge=0,
            le=MAX_INT32,
            description="Streams only: resume after this seq (sent by reconnecting clients).",
        ),
    ] = None,
) -> Any:
    """The job's events (status, per-epoch metrics, logs, warnings), oldest first.

    With `Accept: text/event-stream` the response is a live stream instead: each event as
    `id: <seq>`, `event: <type>`, `data: <the event as JSON>`, comments as keep-alives, and
    the stream closes after the event with the job's final status. Open streams are
    bounded per API key and per process (429 too_many_streams, with Retry-After).
    """
    if _EVENT_STREAM in request.headers.get("accept", ""):
        jobs_service.get(session, job_id)
        resume_after = last_event_id if last_event_id is not None else (after or 0)
        hub = request.app.state.event_hub
        # The key the auth middleware found; None with auth disabled (process bound only).
        slot = hub.reserve(request.scope.get("graft.key_id"))
        # The session above closes when this function returns: the stream holds none.
        return StreamingResponse(
            hub.stream(job_id, resume_after, slot),
            media_type=_EVENT_STREAM,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    rows, has_more = jobs_service.list_events(session, job_id, after=after, limit=limit)
    return Page[EventRead](data=[EventRead.model_validate(r) for r in rows], has_more=has_more)
