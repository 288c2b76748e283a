"""A batch prediction job: a stored dataset through a version, chunk by chunk, into a new
dataset.

Memory follows `chunk_rows`, not the dataset: the input is read a stored piece at a time and
decoded a chunk at a time (`datasets.chunks`, the loader every reader uses), and the result
is written a piece at a time, each piece in a short transaction of its own. The
result's pieces stay invisible until the job's last transaction adds the dataset row and
marks the job succeeded together; a run that ends any other way removes them.
"""

import io
import logging
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from app.db.models import Dataset, Job
from app.db.session import Database
from app.enums import EventType, JobStatus
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
from app.ml import frames, inputs
from app.ml.errors import DataError
from app.services import dataset_files
from app.services import datasets as datasets_service
from app.services import registry as registry_service
from app.services.job_events import add_event
from app.services.predictions import version_spec
from app.services.row_job_drafts import PREDICTION_COLUMN, PROBABILITY_PREFIX
from app.serving.predictor import Predictor

log = logging.getLogger(__name__)


class ResultWriter:
    """Encodes each chunk's id columns and outputs as CSV or JSON Lines text."""

    def __init__(
        self, fmt: str, id_columns: list[str], predictor: Predictor, probabilities: bool
    ) -> None:
        self.fmt = fmt
        self.id_columns = id_columns
        self.predictor = predictor
        self.classes = predictor.classes if predictor.classification and probabilities else None
        self.columns: list[dict[str, str]] | None = None
        self._first = True

    def encode(self, chunk: pd.DataFrame, raw: np.ndarray) -> bytes:
        outputs = self.predictor.outputs(raw)
        result = chunk[self.id_columns].reset_index(drop=True).copy()
        predictions = outputs.predictions
        result[PREDICTION_COLUMN] = (
            predictions if isinstance(predictions, np.ndarray) else pd.Series(predictions)
        )
        if self.classes is not None:
            for index, label in enumerate(self.classes):
                result[f"{PROBABILITY_PREFIX}{label}"] = raw[:, index].astype(np.float64)
        if self.columns is None:
            self.columns = [
                {"name": str(name), "dtype": frames.column_dtype(result[name])} for name in result
            ]
        text = io.StringIO()
        if self.fmt == "csv":
            result.to_csv(text, index=False, header=self._first, lineterminator="\n")
        else:
            result.to_json(text, orient="records", lines=True, force_ascii=False)
            if not text.getvalue().endswith("\n"):
                text.write("\n")
        self._first = False
        return text.getvalue().encode()


def _start(db: Database, job_id: str, context: WorkerContext) -> str:
    """The run's result dataset id. Each run names a new one (a worker that lost the job and
    still writes cannot collide with this run); pieces a lost earlier run left are removed."""
    result_id = new_id("ds")
    with db.session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        if job.status != JobStatus.RUNNING or job.worker_id != context.worker_id:
            raise WorkerStopping
        earlier = job.result_dataset_id
        if earlier is not None and session.get(Dataset, earlier) is None:
            dataset_files.remove(session, earlier)
        job.result_dataset_id = result_id
    return result_id


def run(db: Database, job_id: str, context: WorkerContext) -> JobStatus:
    with db.read_scope() as session:
        job = session.scalars(select(Job).where(Job.id == job_id)).one()
        request = dict(job.request)
        pinned = (job.base_model_name, job.base_model_version)
        dataset = datasets_service.get(session, job.dataset_id)
        source = (dataset.id, dataset.format, dataset.size_bytes, dataset.rows)
    time_limit = request.get("timeout_seconds") or context.job_timeout_seconds
    progress = RowProgress(db, job_id, context, rows_total=source[3], time_limit=time_limit)
    writer: dataset_files.PieceWriter | None = None
    try:
        writer = dataset_files.PieceWriter(db, _start(db, job_id, context))
        with db.read_scope() as session:
            assert pinned[0] is not None and pinned[1] is not None
            version = registry_service.get_version(session, pinned[0], pinned[1], with_weights=True)
            predictor = Predictor.load(version_spec(version), version.weights)
        result = ResultWriter(
            request["output_format"], request["id_columns"], predictor, request["probabilities"]
        )
        done = 0
        feature_spec = predictor.spec.preprocessing["features"]
        for chunk in datasets_service.chunks(dataset, request["chunk_rows"], database=db):
            features = chunk.reindex(columns=predictor.input_names)
            try:
                encoded = inputs.encode_features(feature_spec, features)
            except DataError as exc:
                raise DataError(
                    f"in the rows from row {done} on (rows count from 0): {exc}", exc.code
                ) from exc
            writer.write(result.encode(chunk, predictor.forward(encoded)))
            done += len(chunk)
            # Dropped before the next chunk is decoded, so two are never held at once.
            del chunk, features, encoded
            release_free_memory()
            progress.advance(done)
        sha256 = writer.close()
        return _record(db, job_id, context, writer, result, done, sha256, request, pinned)
    except JobCancelled:
        _discard(writer)
        finish(db, job_id, context, JobStatus.CANCELLED, "job cancelled; no dataset was created")
        return JobStatus.CANCELLED
    except WorkerStopping:
        _discard(writer)
        requeue(db, job_id, context.worker_id)
        return JobStatus.QUEUED
    except (JobTimedOut, DataError) as exc:
        _discard(writer)
        code = exc.code if isinstance(exc, DataError) else "timeout"
        return fail(db, job_id, context, code, without_paths(str(exc)))
    except Exception as exc:
        log.exception("job %s failed", job_id)
        _discard(writer)
        return fail(db, job_id, context, "internal_error", internal_error(exc, job_id))


def _discard(writer: dataset_files.PieceWriter | None) -> None:
    if writer is None:
        return
    try:
        writer.discard()
    except Exception:
        # Left behind, they are removed when the job runs again (see `_start`).
        log.exception("removing the partial result %s failed", writer.dataset_id)


def _record(
    db: Database,
    job_id: str,
    context: WorkerContext,
    writer: dataset_files.PieceWriter,
    result: ResultWriter,
    rows: int,
    sha256: str,
    request: dict[str, Any],
    pinned: tuple[str | None, int | None],
) -> JobStatus:
    """One transaction: the result dataset and the job's success, or neither."""
    with db.session_scope() as session:
        job = session.get(Job, job_id, with_for_update=True)
        assert job is not None
        if job.status != JobStatus.RUNNING or job.worker_id != context.worker_id:
            log.warning("job %s is no longer ours (%s); result discarded", job_id, job.status)
            dataset_files.remove(session, writer.dataset_id)
            return JobStatus(job.status)
        if job.cancel_requested:
            dataset_files.remove(session, writer.dataset_id)
            job.status = JobStatus.CANCELLED
            job.finished_at = utcnow()
            add_event(
                session,
                job_id,
                EventType.STATUS,
                "job cancelled; no dataset was created",
                {"status": JobStatus.CANCELLED},
            )
            return JobStatus.CANCELLED
        now = utcnow()
        model = {"name": pinned[0], "version": pinned[1]}
        session.add(
            Dataset(
                id=writer.dataset_id,
                name=request["result_name"],
                format=request["output_format"],
                rows=rows,
                columns=result.columns or [],
                size_bytes=writer.size,
                sha256=sha256,
                origin={
                    "type": "batch_prediction",
                    "job_id": job_id,
                    "dataset_id": job.dataset_id,
                    "model": model,
                },
                created_at=now,
                created_by=job.created_by,
                tags={},
            )
        )
        elapsed = (now - job.started_at).total_seconds() if job.started_at else None
        job.status = JobStatus.SUCCEEDED
        job.finished_at = now
        job.metrics = {
            "rows": rows,
            "result_dataset_id": writer.dataset_id,
            "model": model,
            "size_bytes": writer.size,
            "rows_per_second": round(rows / elapsed, 1) if elapsed else None,
        }
        add_event(
            session,
            job_id,
            EventType.STATUS,
            f"job succeeded: {rows:,} predictions in dataset {writer.dataset_id}",
            {
                "status": JobStatus.SUCCEEDED,
                "result_dataset_id": writer.dataset_id,
                "rows": rows,
            },
        )
    return JobStatus.SUCCEEDED
