"""An evaluation job: versions scored on a labelled dataset, the scores stored with each.

One pass over the rows, a chunk at a time, feeds every version's accumulator
(`app.ml.evaluation`), so memory follows `chunk_rows` and the number of versions, not the
dataset. Nothing is stored until the last transaction, which writes every version's scores
and the job's success together.
"""

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from app.db.models import Job, ModelEvaluation
from app.db.session import Database
from app.enums import EventType, JobStatus
from app.errors import NotFound
from app.ids import new_id, utcnow
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
from app.jobs.runner.memory import release_free_memory
from app.jobs.runner.rows import RowProgress
from app.ml import evaluation, inputs, tabular
from app.ml.errors import DataError
from app.services import datasets as datasets_service
from app.services import registry as registry_service
from app.services.job_events import add_event
from app.services.predictions import version_spec
from app.serving.predictor import Predictor

log = logging.getLogger(__name__)


@dataclass
class _Scored:
    """One version being scored: its predictor, its labels' column and its running sums."""

    predictor: Predictor
    target: str
    accumulator: evaluation.ClassificationAccumulator | evaluation.RegressionAccumulator
    skipped_rows: int = 0

    def add(self, chunk: pd.DataFrame, offset: int) -> None:
        if self.target not in chunk.columns:
            raise DataError(f"column {self.target!r} is missing", code="missing_column")
        labels = chunk[self.target]
        # Rows without a label say nothing about the model; they are counted, not scored.
        known = labels.notna().to_numpy()
        if not known.all():
            self.skipped_rows += int((~known).sum())
            chunk, labels = chunk[known], labels[known]
        if chunk.empty:
            return
        features = chunk.reindex(columns=self.predictor.input_names)
        spec = self.predictor.spec
        try:
            encoded = inputs.encode_features(spec.preprocessing["features"], features)
        except DataError as exc:
            raise DataError(
                f"{spec.name} version {spec.version}, rows from row {offset} on (rows count "
                f"from 0): {exc}",
                exc.code,
            ) from exc
        raw = self.predictor.forward(encoded)
        if isinstance(self.accumulator, evaluation.ClassificationAccumulator):
            self.accumulator.add(labels.to_numpy(dtype=object), raw)
        else:
            targets = tabular.finite_numbers(labels, self.target)
            predictions = np.asarray(
                tabular.decode_regression(spec.preprocessing["target"], raw), dtype=np.float64
            )
            self.accumulator.add(targets, predictions)

    def result(self) -> dict[str, Any]:
        try:
            scores = self.accumulator.result()
        except ValueError as exc:
            spec = self.predictor.spec
            raise DataError(
                f"{spec.name} version {spec.version}: no labelled row to score ({exc})",
                "no_labelled_rows",
            ) from exc
        return {**scores, "unlabelled_rows": self.skipped_rows}


def _load(db: Database, pinned: list[dict[str, Any]]) -> list[_Scored]:
    scored = []
    with db.read_scope() as session:
        for entry in pinned:
            try:
                version = registry_service.get_version(
                    session, entry["name"], entry["version"], with_weights=True
                )
            except NotFound as exc:
                raise DataError(
                    f"{entry['name']} version {entry['version']} was deleted after the job "
                    "was queued",
                    "version_not_found",
                ) from exc
            predictor = Predictor.load(version_spec(version), version.weights)
            accumulator: evaluation.ClassificationAccumulator | evaluation.RegressionAccumulator
            if predictor.classification:
                accumulator = evaluation.ClassificationAccumulator(predictor.classes or [])
            else:
                accumulator = evaluation.RegressionAccumulator()
            scored.append(_Scored(predictor, entry["target"], accumulator))
    return scored


def run(db: Database, job_id: str, context: WorkerContext) -> JobStatus:
    with db.read_scope() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        request = dict(job.request)
        dataset = datasets_service.get(session, job.dataset_id)
        source: dict[str, Any] = {
            "id": dataset.id,
            "format": dataset.format,
            "size": dataset.size_bytes,
            "rows": dataset.rows,
            "name": dataset.name,
            "sha256": dataset.sha256,
        }
    time_limit = request.get("timeout_seconds") or context.job_timeout_seconds
    progress = RowProgress(db, job_id, context, rows_total=source["rows"], time_limit=time_limit)
    try:
        scored = _load(db, request["pinned"])
        done = 0
        for chunk in datasets_service.chunks(dataset, request["chunk_rows"], database=db):
            for one in scored:
                one.add(chunk, done)
            done += len(chunk)
            # Dropped before the next chunk is decoded, so two are never held at once.
            del chunk
            release_free_memory()
            progress.advance(done)
        results = [one.result() for one in scored]
        return _record(db, job_id, context, scored, results, source)
    except JobCancelled:
        finish(db, job_id, context, JobStatus.CANCELLED, "job cancelled; no scores were stored")
        return JobStatus.CANCELLED
    except WorkerStopping:
        requeue(db, job_id, context.worker_id)
        return JobStatus.QUEUED
    except (JobTimedOut, DataError) as exc:
        code = exc.code if isinstance(exc, DataError) else "timeout"
        return fail(db, job_id, context, code, without_paths(str(exc)))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        return fail(db, job_id, context, "internal_error", internal_error(exc, job_id))


def _record(
    db: Database,
    job_id: str,
    context: WorkerContext,
    scored: list[_Scored],
    results: list[dict[str, Any]],
    source: dict[str, Any],
) -> JobStatus:
    with db.session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        if job.status != JobStatus.RUNNING or job.worker_id != context.worker_id:
            log.warning("job %s is no longer ours (%s); scores discarded", job_id, job.status)
            return JobStatus(job.status)
        now = utcnow()
        if job.cancel_requested:
            job.status = JobStatus.CANCELLED
            job.finished_at = now
            add_event(
                session,
                job_id,
                EventType.STATUS,
                "job cancelled; no scores were stored",
                {"status": JobStatus.CANCELLED},
            )
            return JobStatus.CANCELLED
        summary = []
        for one, metrics in zip(scored, results, strict=True):
            spec = one.predictor.spec
            session.add(
                ModelEvaluation(
                    id=new_id("eval"),
                    model_name=spec.name,
                    version=spec.version,
                    job_id=job_id,
                    dataset_id=source["id"],
                    dataset_name=source["name"],
                    dataset_sha256=source["sha256"],
                    target_column=one.target,
                    task=spec.task,
                    metrics=metrics,
                    created_at=now,
                    created_by=job.created_by,
                )
            )
            summary.append(
                {
                    "model": {"name": spec.name, "version": spec.version},
                    "target_column": one.target,
                    "metrics": metrics,
                }
            )
        job.status = JobStatus.SUCCEEDED
        job.finished_at = now
        job.metrics = {
            "dataset": {key: source[key] for key in ("id", "name", "sha256", "rows")},
            "evaluations": summary,
        }
        add_event(
            session,
            job_id,
            EventType.STATUS,
            f"job succeeded: {len(summary)} version(s) scored on dataset {source['id']}",
            {"status": JobStatus.SUCCEEDED, "versions": len(summary)},
        )
    return JobStatus.SUCCEEDED
