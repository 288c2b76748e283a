"""The Celery executor: the broker carries job ids, workers run the same claim and run_job.

Start workers with `graft worker --executor celery` or
`celery -A app.jobs.celery_app worker` (both read GRAFT_* settings).

A message only says "job X is waiting". The database stays the source of truth: the
atomic claim makes a delivered-twice message run its job once, a message for a job that
is no longer queued is dropped (after picking up any other waiting job), and each worker
sweeps for jobs whose worker was lost and publishes them again.
"""

import logging
import os
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any

from celery import Celery, signals
from kombu.exceptions import ChannelError

from app.config import Settings, get_settings
from app.db.session import Database
from app.enums import JobStatus
from app.jobs import queue
from app.jobs.runner import WorkerContext
from app.jobs.worker import new_context, prepare_torch, serve_job, sweep

log = logging.getLogger(__name__)

RUN_JOB = "graft.run_job"
ALIVE_FILE = Path(tempfile.gettempdir()) / "graft-worker-alive"
_DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def make_celery(settings: Settings) -> Celery:
    celery = Celery("graft", broker=settings.broker_url or _DEFAULT_BROKER, set_as_current=False)
    celery.conf.update(
        # A job message is acknowledged only when the job has ended, one message per
        # worker at a time, and a message whose worker died goes back to the broker.
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        task_reject_on_worker_lost=True,
        task_ignore_result=True,
        task_default_queue=settings.celery_queue,
        task_serializer="json",
        accept_content=["json"],
        # One job at a time per worker process, run in that process: the heartbeat
        # thread, SIGTERM hand-back and torch thread bound all work as in `graft worker`.
        worker_pool="solo",
        worker_concurrency=1,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    if celery.conf.broker_url.startswith(("redis://", "rediss://")):
        # Every Redis key of this deployment (queue, bindings, unacknowledged messages)
        # under the queue's name, so deployments sharing a Redis never touch each other.
        celery.conf.broker_transport_options = {"global_keyprefix": f"{settings.celery_queue}:"}
    return celery


app = make_celery(get_settings())


def publish(celery: Celery, settings: Settings, job_id: str) -> None:
    celery.send_task(RUN_JOB, args=[job_id], queue=settings.celery_queue)


class CeleryDispatcher:
    """The API side: enqueue the id of each job it has committed."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._celery = make_celery(settings)

    def job_queued(self, job_id: str) -> None:
        publish(self._celery, self._settings, job_id)

    def broker_error(self) -> str | None:
        """None when the broker answers, else why not."""
        try:
            with self._celery.connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=2)
        except Exception as exc:
            return f"{type(exc).__name__}: {exc}"
        return None

    def close(self) -> None:
        self._celery.close()


class _WorkerRuntime:
    """What one Celery worker process keeps between tasks: database, identity, sweeper."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = Database(settings.resolved_database_url)
        self.context: WorkerContext = new_context(settings)
        self._sweeper: threading.Thread | None = None
        prepare_torch(settings)

    def start_sweeper(self) -> None:
        self._sweeper = threading.Thread(target=self._sweep_forever, name="sweeper", daemon=True)
        self._sweeper.start()

    def _sweep_forever(self) -> None:
        while not self.context.stop.wait(self.settings.sweep_seconds):
            ALIVE_FILE.touch()  # for container health checks: the process still runs
            try:
                for job_id in sweep(self.db, self.settings):
                    publish(app, self.settings, job_id)
                self._republish_orphans()
            except Exception:  # the next sweep tries again
                log.exception("sweep failed")

    def _republish_orphans(self) -> None:
        """Publish again for queued jobs the broker holds no message for (a lost publish)."""
        with self.db.read_scope() as session:
            waiting = queue.queued_before(session, seconds_ago=2 * self.settings.sweep_seconds)
        if not waiting:
            return
        ready = self._ready_messages()
        for job_id in waiting[ready:]:
            log.warning("job %s has no message in the broker; publishing it again", job_id)
            publish(app, self.settings, job_id)

    def _ready_messages(self) -> int:
        """Messages waiting in the queue (not those a worker holds unacknowledged)."""
        name = self.settings.celery_queue
        with app.connection_for_read() as connection:
            channel = connection.default_channel
            if connection.transport.driver_type == "redis":
                # The queue is a Redis list (its key prefixed by the client); kombu's
                # passive declare misses it when a key prefix is set.
                return int(channel.client.llen(name))
            try:
                return int(channel.queue_declare(queue=name, passive=True).message_count)
            except ChannelError:
                return 0

    def run(self, job_id: str) -> str:
        with self.db.session_scope() as session:
            claimed = queue.claim(session, job_id, self.context.worker_id)
        if not claimed:
            # Delivered twice, cancelled, or already run: nothing to do for this id, but
            # another job may be waiting for a message that went missing.
            with self.db.session_scope() as session:
                other = queue.claim_next(session, self.context.worker_id)
            if other is None:
                return "skipped"
            job_id = other
        status = serve_job(self.db, job_id, self.context, self.settings)
        if status == JobStatus.QUEUED:
            # Handed back on shutdown: another worker needs a message to pick it up.
            publish(app, self.settings, job_id)
        return str(status)


_runtime: _WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def _get_runtime() -> _WorkerRuntime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = _WorkerRuntime(get_settings())
        return _runtime


@app.task(name=RUN_JOB)
def run_job_task(job_id: str) -> str:
    return _get_runtime().run(job_id)


@signals.worker_ready.connect
def _on_worker_ready(**_kwargs: Any) -> None:
    runtime = _get_runtime()
    log.info("celery worker %s ready", runtime.context.worker_id)
    runtime.start_sweeper()


@signals.worker_shutting_down.connect
def _on_worker_shutting_down(**_kwargs: Any) -> None:
    # The running job goes back to the queue at its next epoch; the task then returns.
    if _runtime is not None:
        _runtime.context.stop.set()


def run_celery_worker(settings: Settings) -> None:
    """`graft worker --executor celery`: one solo worker on the configured queue."""
    if not settings.broker_url:
        raise SystemExit("graft worker --executor celery needs GRAFT_BROKER_URL")
    node = f"graft-{os.getpid()}@{socket.gethostname()}"
    app.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level.upper()}",
            f"--queues={settings.celery_queue}",
            f"--hostname={node}",
            "--without-mingle",
            "--without-gossip",
            "--without-heartbeat",
        ]
    )
