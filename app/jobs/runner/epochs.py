"""Progress of a training job: an event per epoch (written in batches), the ETA, and the
cancel, stop and time checks between epochs and batches."""

import logging
import time
from datetime import timedelta
from typing import Any

from app.db.models import Job
from app.db.session import Database
from app.enums import EventType
from app.ids import utcnow
from app.jobs.runner.lifecycle import (
    JobCancelled,
    JobTimedOut,
    WorkerContext,
    WorkerStopping,
)
from app.ml import training
from app.services.job_events import add_event

log = logging.getLogger(__name__)


# Epoch events are written in batches, at most this often (and at the last epoch): an epoch
# of a small model takes milliseconds, and a write transaction per epoch made concurrent
# workers queue on SQLite's single write lock. Live watchers poll about as often anyway.
FLUSH_SECONDS = 0.2


class EpochReporter:
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
