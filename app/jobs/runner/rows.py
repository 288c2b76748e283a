"""Progress of a job that walks a dataset's rows (batch prediction, evaluation).

Between chunks it writes the rows done and an ETA, beats the heartbeat and checks for a
cancel, a stopping worker and the time limit: the same promises a training job keeps at
its epochs.
"""

import time
from datetime import timedelta

from app.db.models import Job
from app.db.session import Database
from app.enums import EventType
from app.ids import utcnow
from app.jobs.runner.lifecycle import JobCancelled, JobTimedOut, WorkerContext, WorkerStopping
from app.services.job_events import add_event

# Progress is written at most this often (and at the last chunk): a chunk of a small model
# takes milliseconds, and each write takes SQLite's one write lock.
FLUSH_SECONDS = 0.5


class RowProgress:
    def __init__(
        self,
        db: Database,
        job_id: str,
        context: WorkerContext,
        *,
        rows_total: int,
        time_limit: float | None,
    ) -> None:
        self.db = db
        self.job_id = job_id
        self.context = context
        self.rows_total = rows_total
        self.time_limit = time_limit
        self.started = time.monotonic()
        self.deadline = None if time_limit is None else self.started + time_limit
        self._flushed_at = 0.0

    def advance(self, rows_done: int) -> None:
        """After a chunk: maybe write progress; raise if the job must stop."""
        now = time.monotonic()
        last = rows_done >= self.rows_total
        if self.context.stop.is_set():
            raise WorkerStopping
        if last or now - self._flushed_at >= FLUSH_SECONDS:
            self._flush(rows_done, now)
        if self.deadline is not None and now > self.deadline and not last:
            raise JobTimedOut(
                f"the job ran longer than its time limit of {self.time_limit:g} s and was "
                f"stopped after {rows_done:,} of {self.rows_total:,} rows; raise "
                "timeout_seconds in the request"
            )

    def _flush(self, rows_done: int, now: float) -> None:
        # Chunks cost about the same per row, so the rate so far predicts the rest.
        elapsed = now - self.started
        remaining = max(0, self.rows_total - rows_done)
        eta = elapsed / rows_done * remaining if rows_done else None
        progress: dict[str, object] = {"rows_done": rows_done, "rows_total": self.rows_total}
        if eta is not None:
            progress["estimated_finish_at"] = (utcnow() + timedelta(seconds=eta)).isoformat()
        with self.db.session_scope() as session:
            job = session.get(Job, self.job_id)
            assert job is not None
            job.progress = progress
            job.heartbeat_at = utcnow()
            add_event(
                session,
                self.job_id,
                EventType.METRICS,
                f"{rows_done:,} of {self.rows_total:,} rows",
                {
                    "rows_done": rows_done,
                    "rows_total": self.rows_total,
                    "rows_per_second": round(rows_done / elapsed, 1) if elapsed > 0 else None,
                },
            )
            cancel = job.cancel_requested
        self._flushed_at = now
        if cancel:
            raise JobCancelled
