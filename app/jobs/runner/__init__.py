"""run_job(job_id): one claimed job, from its request to its recorded end.

The story, module by module:
- a worker claims the job (app/jobs/queue.py) and calls `run_job`;
- row jobs (`batch_prediction`, `evaluation`) walk a dataset's rows through registered
  versions, reporting rows done (`rows`);
- training jobs load their dataset, then `source_training` fits a new model or `fine_tuning`
  loads the base and hands the pure plan in app/ml/transfer the rows; `epochs` reports each
  epoch (events, ETA) and stops the run on cancel, shutdown or the time limit;
- `outcome` registers the version and ends the job in one transaction; `lifecycle` ends it any
  other way (failed, cancelled, back to the queue), checked against the job's owner.
"""

import logging
import time

from sqlalchemy import select

from app.db.models import Job
from app.db.session import Database
from app.enums import JobKind, JobStatus
from app.jobs.runner import batch_prediction, evaluation, fine_tuning, source_training
from app.jobs.runner import outcome as outcome_writer
from app.jobs.runner.epochs import EpochReporter
from app.jobs.runner.lifecycle import (
    JobCancelled,
    JobTimedOut,
    WorkerContext,
    WorkerStopping,
    fail,
    finish,
    internal_error,
    requeue,
    without_paths,
)
from app.ml import inputs, serialization
from app.ml.errors import DataError
from app.services import datasets as datasets_service

__all__ = ["WorkerContext", "run_job"]

log = logging.getLogger(__name__)


# Jobs that walk a dataset's rows through versions already registered; the rest train.
_ROW_JOBS = {JobKind.BATCH_PREDICTION: batch_prediction.run, JobKind.EVALUATION: evaluation.run}


def run_job(db: Database, job_id: str, context: WorkerContext) -> JobStatus:
    """Run a job this worker has claimed and record how it ended."""
    started = time.monotonic()
    with db.read_scope() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        request = dict(job.request)
    if job.kind in _ROW_JOBS:
        return _ROW_JOBS[JobKind(job.kind)](db, job_id, context)
    hyper = request["hyperparameters"]
    time_limit = request.get("timeout_seconds") or context.job_timeout_seconds
    reporter = EpochReporter(
        db, job_id, context, time_limit=time_limit, started=started, epochs=hyper["epochs"]
    )
    try:
        with db.read_scope() as session:
            data = datasets_service.load_data(session, job.dataset_id)
        reporter.check_deadline()
        if job.kind == JobKind.SOURCE_TRAINING:
            outcome = source_training.train(db, job_id, data, request, reporter)
        else:
            labels = inputs.labels(data, request["target_column"])
            fine_tuning.check_classes(db, job, labels)
            outcome = fine_tuning.run(
                db,
                job,
                data,
                labels,
                request,
                on_epoch=reporter,
                on_batch=reporter.check_deadline,
                check=reporter.check,
                emit=reporter.emit,
            )
        reporter.flush()
    except JobCancelled:
        finish(db, job_id, context, JobStatus.CANCELLED, "job cancelled; no version was created")
        return JobStatus.CANCELLED
    except WorkerStopping:
        reporter.flush_quietly()
        requeue(db, job_id, context.worker_id)
        return JobStatus.QUEUED
    except (JobTimedOut, DataError) as exc:
        reporter.flush_quietly()
        code = exc.code if isinstance(exc, DataError) else "timeout"
        return fail(db, job_id, context, code, without_paths(str(exc)))
    except Exception as exc:
        # The traceback goes to the worker's log only: the job's message is public.
        log.exception("job %s failed", job_id)
        reporter.flush_quietly()
        return fail(db, job_id, context, "internal_error", internal_error(exc, job_id))

    result = outcome.result
    weights = serialization.weights_to_bytes(outcome.draft.model)
    metrics = {
        **result.metrics,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "rows": outcome.rows,
        **outcome.extra_metrics,
    }
    try:
        return outcome_writer.record_version(db, job, context, outcome, hyper, weights, metrics)
    except Exception as exc:
        # Without this the job would stay `running` until its heartbeat went stale.
        log.exception("job %s: recording its result failed", job_id)
        message = internal_error(exc, job_id, "the model trained but recording it failed")
        return fail(db, job_id, context, "internal_error", message)
