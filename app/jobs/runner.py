"""run_job(job_id): one claimed job from data to a registered version, or a clean failure."""

import logging
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pandas as pd
from sqlalchemy import select

from app.db.models import Job, ModelVersion
from app.db.session import Database
from app.enums import EventType, JobKind, JobStatus, Task, VersionKind
from app.ids import utcnow
from app.jobs import batch_prediction, evaluation, fine_tuning
from app.jobs.lifecycle import (
    JobCancelled,
    JobTimedOut,
    WorkerContext,
    WorkerStopping,
)
from app.jobs.lifecycle import fail as _fail
from app.jobs.lifecycle import finish as _finish
from app.jobs.lifecycle import internal_error as _internal_error
from app.jobs.lifecycle import requeue as _requeue
from app.jobs.lifecycle import without_paths as _without_paths
from app.ml import architectures, inputs, serialization, tabular, training
from app.ml.errors import DataError
from app.services import datasets as datasets_service
from app.services import registry as registry_service
from app.services import work_estimate
from app.services.job_events import add_event

log = logging.getLogger(__name__)


@dataclass
class _Prepared:
    """Everything source training needs, built from the job's request and its data."""

    draft: fine_tuning.VersionDraft
    target: str
    warnings: list[str]
    notes: list[str]


def _signature(data: inputs.Data, features: list[str], target: str, target_spec: dict) -> dict:
    return {
        "inputs": inputs.signature_inputs(data, features),
        "classes": target_spec.get("classes"),
        "target": target,
    }


def _class_warnings(labels: pd.Series) -> list[str]:
    observed = labels.dropna().unique()
    if len(observed) == 1:
        return [
            f"the training data holds a single class ({observed[0]!r}): the model can only "
            "learn to predict that class; add rows of other classes for a useful classifier"
        ]
    return []


def _prepare_source(data: inputs.Data, request: dict[str, Any], seed: int) -> _Prepared:
    target = request["target_column"]
    labels = inputs.labels(data, target)
    features = inputs.feature_names(data, target, request.get("feature_columns"))
    task = Task(request.get("task") or tabular.infer_task(labels))
    feature_spec = inputs.fit_features(data, features)
    target_spec = tabular.fit_target(labels, task)
    work_estimate.check_fitted(feature_spec, target_spec)  # the caps the estimate assumed
    output_dim = len(target_spec["classes"]) if task == Task.CLASSIFICATION else 1
    architecture = {
        **request["architecture"],
        "input_dim": feature_spec["input_dim"],
        "output_dim": output_dim,
        **inputs.architecture_inputs(feature_spec),
    }
    training.set_seed(seed)
    model = architectures.build_model(architecture, feature_spec["input_dim"], output_dim)
    draft = fine_tuning.VersionDraft(
        model=model,
        task=task,
        feature_spec=feature_spec,
        target_spec=target_spec,
        architecture=architecture,
        signature=_signature(data, features, target, target_spec),
        version_fields={
            "kind": VersionKind.SOURCE,
            "strategy": None,
            "parent_name": None,
            "parent_version": None,
        },
    )
    return _Prepared(
        draft=draft,
        target=target,
        warnings=_class_warnings(labels) if task == Task.CLASSIFICATION else [],
        notes=[f"task: {task}; {len(features)} features -> {feature_spec['input_dim']} inputs"],
    )


def _train_source(
    db: Database,
    job_id: str,
    data: inputs.Data,
    request: dict[str, Any],
    reporter: "_Reporter",
) -> fine_tuning.Outcome:
    hyper = request["hyperparameters"]
    prepared = _prepare_source(data, request, hyper["seed"])
    with db.session_scope() as session:
        for note in prepared.notes:
            add_event(session, job_id, EventType.LOG, note)
        for warning in prepared.warnings:
            add_event(session, job_id, EventType.WARNING, warning)
    draft = prepared.draft
    x, y = inputs.encode(data, draft.feature_spec, draft.target_spec, prepared.target)
    labels = y if draft.task == Task.CLASSIFICATION else None
    train_idx, val_idx = training.split_indices(
        len(y), hyper["validation_fraction"], hyper["seed"], labels
    )
    result = training.fit(
        draft.model,
        x[train_idx],
        y[train_idx],
        x[val_idx],
        y[val_idx],
        target_spec=draft.target_spec,
        epochs=hyper["epochs"],
        batch_size=hyper["batch_size"],
        learning_rate=hyper["learning_rate"],
        weight_decay=hyper["weight_decay"],
        optimizer=hyper["optimizer"],
        early_stopping_patience=hyper["early_stopping_patience"],
        seed=hyper["seed"],
        on_epoch=reporter,
        on_batch=reporter.check_deadline,
    )
    return fine_tuning.Outcome(
        draft=draft, result=result, rows={"train": len(train_idx), "validation": len(val_idx)}
    )


# Epoch events are written in batches, at most this often (and at the last epoch): an epoch
# of a small model takes milliseconds, and a write transaction per epoch made concurrent
# workers queue on SQLite's single write lock. Live watchers poll about as often anyway.
FLUSH_SECONDS = 0.2


class _Reporter:
    """The per-epoch callback: one metrics event, progress, and the cancel/stop/time checks."""

    def __init__(
        self,
        db: Database,
        job_id: str,
        context: WorkerContext,
        *,
        time_limit: float | None,
        started: float,
        epochs: int,
    ) -> None:
        self.db = db
        self.job_id = job_id
        self.context = context
        self.time_limit = time_limit
        self.started = started
        self.deadline = None if time_limit is None else started + time_limit
        self.training_started = time.monotonic()
        self._last_activity = self.training_started
        self.epoch = 0
        self.epochs = epochs
        self._pending: list[dict[str, Any]] = []
        self._progress: dict[str, Any] | None = None
        self._flushed_at = 0.0

    def check_deadline(self) -> None:
        """Cheap enough to call after every batch, so a long epoch cannot overrun the limit."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise JobTimedOut(
                f"the job ran longer than its time limit of {self.time_limit:g} s and was "
                f"stopped after epoch {self.epoch} of {self.epochs}; raise timeout_seconds "
                "in the request, or lower epochs or the data size"
            )

    def __call__(self, epoch: training.EpochMetrics) -> None:
        self.epoch, self.epochs = epoch.epoch, epoch.epochs
        now = time.monotonic()
        if epoch.epoch == 1:
            # A new fit begins (auto cross-validates before its final fit): time it alone.
            self.training_started = self._last_activity
        self._last_activity = now
        # Epochs cost about the same, so the average so far predicts the rest; early
        # stopping can only make the estimate pessimistic.
        per_epoch = (now - self.training_started) / epoch.epoch
        finish = utcnow() + timedelta(seconds=per_epoch * (epoch.epochs - epoch.epoch))
        self._progress = {
            "epoch": epoch.epoch,
            "epochs": epoch.epochs,
            "estimated_finish_at": finish.isoformat(),
        }
        self._pending.append(epoch.as_dict())
        stopping = self.context.stop.is_set()
        if stopping or epoch.epoch == epoch.epochs or now - self._flushed_at >= FLUSH_SECONDS:
            self.flush()
        if stopping:
            raise WorkerStopping
        if epoch.epoch < epoch.epochs:
            self.check_deadline()

    def flush(self) -> None:
        """Write the pending epoch events and the progress; JobCancelled if cancel was asked."""
        pending, self._pending = self._pending, []
        with self.db.session_scope() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            if self._progress is not None:
                job.progress = self._progress
            job.heartbeat_at = utcnow()
            for metrics in pending:
                add_event(
                    session, self.job_id, EventType.METRICS, f"epoch {metrics['epoch']}", metrics
                )
            cancel = job.cancel_requested
        self._flushed_at = time.monotonic()
        if cancel:
            raise JobCancelled

    def flush_quietly(self) -> None:
        """Flush before the job's final status event, whatever ended it."""
        if not self._pending:
            return
        try:
            self.flush()
        except JobCancelled:
            pass
        except Exception:
            log.exception("job %s: writing its last epoch events failed", self.job_id)

    def check(self) -> None:
        """Cancel, stop and time checks, for work between epochs (cross-validation)."""
        self._last_activity = time.monotonic()
        self.flush_quietly()
        with self.db.session_scope() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.heartbeat_at = utcnow()
            cancel = job.cancel_requested
        if cancel:
            raise JobCancelled
        if self.context.stop.is_set():
            raise WorkerStopping
        self.check_deadline()

    def emit(self, kind: EventType, message: str, data: dict[str, Any] | None) -> None:
        self.flush_quietly()
        with self.db.session_scope() as session:
            add_event(session, self.job_id, kind, message, data)


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
    reporter = _Reporter(
        db, job_id, context, time_limit=time_limit, started=started, epochs=hyper["epochs"]
    )
    try:
        with db.read_scope() as session:
            data = datasets_service.load_data(session, job.dataset_id)
        reporter.check_deadline()
        if job.kind == JobKind.SOURCE_TRAINING:
            outcome = _train_source(db, job_id, data, request, reporter)
        else:
            labels = inputs.labels(data, request["target_column"])
            _check_fine_tuning_classes(db, job, labels)
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
        _finish(db, job_id, context, JobStatus.CANCELLED, "job cancelled; no version was created")
        return JobStatus.CANCELLED
    except WorkerStopping:
        reporter.flush_quietly()
        _requeue(db, job_id, context.worker_id)
        return JobStatus.QUEUED
    except (JobTimedOut, DataError) as exc:
        reporter.flush_quietly()
        code = exc.code if isinstance(exc, DataError) else "timeout"
        return _fail(db, job_id, context, code, _without_paths(str(exc)))
    except Exception as exc:
        # The traceback goes to the worker's log only: the job's message is public.
        log.exception("job %s failed", job_id)
        reporter.flush_quietly()
        return _fail(db, job_id, context, "internal_error", _internal_error(exc, job_id))

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
        return _record_result(db, job, context, outcome, hyper, weights, metrics)
    except Exception as exc:
        # Without this the job would stay `running` until its heartbeat went stale.
        log.exception("job %s: recording its result failed", job_id)
        message = _internal_error(exc, job_id, "the model trained but recording it failed")
        return _fail(db, job_id, context, "internal_error", message)


def _check_fine_tuning_classes(db: Database, job: Job, labels: pd.Series) -> None:
    """The class cap of app/services/work_estimate.py on the base's and the target's classes."""
    with db.read_scope() as session:
        signature = session.scalar(
            select(ModelVersion.signature).where(
                ModelVersion.model_name == job.base_model_name,
                ModelVersion.version == job.base_model_version,
            )
        )
    classes = (signature or {}).get("classes")
    if classes is not None:
        work_estimate.check_class_count(work_estimate.merged_class_count(classes, labels))


def _record_result(
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
