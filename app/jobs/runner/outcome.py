"""The end of a training job that worked: its version registered and the job marked
succeeded in one transaction, or neither."""

import logging
from typing import Any

from app.db.models import Job
from app.db.session import Database
from app.enums import EventType, JobStatus
from app.ids import utcnow
from app.jobs.runner import fine_tuning
from app.jobs.runner.lifecycle import (
    WorkerContext,
)
from app.ml import serialization
from app.services import registry as registry_service
from app.services.job_events import add_event

log = logging.getLogger(__name__)


def record_version(
    db: Database,
    job: Job,
    context: WorkerContext,
    outcome: fine_tuning.Outcome,
    hyper: dict[str, Any],
    weights: bytes,
    metrics: dict[str, Any],
) -> JobStatus:
    """One transaction: the new version and the job's success, or nothing."""
    job_id = job.id
    draft = outcome.draft
    with db.session_scope() as session:
        # Locked until the commit: a cancel at this moment either committed before (and
        # is seen below) or waits and finds the job finished (409 job_finished).
        job_row = session.get(Job, job_id, with_for_update=True)
        assert job_row is not None
        if job_row.status != JobStatus.RUNNING or job_row.worker_id != context.worker_id:
            # Recovery gave the job to another worker while this one was silent;
            # only one of them may register a version.
            log.warning("job %s is no longer ours (%s); result discarded", job_id, job_row.status)
            return JobStatus(job_row.status)
        if job_row.cancel_requested:
            job_row.status = JobStatus.CANCELLED
            job_row.finished_at = utcnow()
            add_event(
                session,
                job_id,
                EventType.STATUS,
                "job cancelled; no version was created",
                {"status": JobStatus.CANCELLED},
            )
            return JobStatus.CANCELLED
        version = registry_service.register_version(
            session,
            name=job.model_name,
            weights=weights,
            job_id=job_id,
            dataset_id=job.dataset_id,
            created_by=job.created_by,
            task=draft.task,
            signature=draft.signature,
            architecture=draft.architecture,
            hyperparameters=hyper,
            preprocessing={"features": draft.feature_spec, "target": draft.target_spec},
            metrics=metrics,
            size_bytes=len(weights),
            sha256=serialization.sha256_hex(weights),
            # A version starts with the tags and description of the job that made it.
            tags=dict(job_row.tags or {}),
            description=job_row.description,
            **draft.version_fields,
        )
        job_row.status = JobStatus.SUCCEEDED
        job_row.finished_at = utcnow()
        job_row.metrics = metrics
        job_row.result_model_name = version.model_name
        job_row.result_version = version.version
        add_event(
            session,
            job_id,
            EventType.STATUS,
            f"job succeeded: {version.model_name} version {version.version}",
            {
                "status": JobStatus.SUCCEEDED,
                "model_name": version.model_name,
                "version": version.version,
            },
        )
    return JobStatus.SUCCEEDED
