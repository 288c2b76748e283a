"""Worker processes: the loop that claims and runs jobs, and the pool the API starts."""

import json
import logging
import multiprocessing
import os
import signal
import threading
import time
from functools import partial
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as ProcessEvent
from pathlib import Path
from types import FrameType

from app.config import Settings
from app.db import changes
from app.db.session import Database
from app.enums import JobStatus
from app.jobs import queue, webhooks
from app.jobs.runner import WorkerContext, run_job
from app.processes import is_running

log = logging.getLogger(__name__)

# In a `graft serve --processes N` runtime folder: the pool's worker pids, and the counter
# that API processes bump when they queue a job.
WORKERS_FILE = "workers.json"
JOBS_QUEUED_FILE = "jobs-queued"
RELAY_SECONDS = 0.02


class _Heartbeat:
    """Beats for the running job from a thread, so a long epoch never looks like a lost worker."""

    def __init__(self, db: Database, job_id: str, worker_id: str, period: float) -> None:
        self._db, self._job_id, self._worker_id, self._period = db, job_id, worker_id, period
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._done.wait(self._period):
            try:
                with self._db.session_scope() as session:
                    queue.heartbeat(session, self._job_id, self._worker_id)
            except Exception:  # a missed beat is retried; it must not kill the job
                log.exception("heartbeat for job %s failed", self._job_id)


def prepare_torch(settings: Settings) -> None:
    """Bound torch's threads (so training leaves cores to serving) and warm it up."""
    import torch

    torch.set_num_threads(settings.worker_torch_threads)
    # The first optimizer built in a process imports torch._dynamo (seconds); pay
    # that while idle, not inside the first job.
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def new_context(settings: Settings, stop: threading.Event | None = None) -> WorkerContext:
    return WorkerContext(
        worker_id=queue.make_worker_id(),
        stop=stop or threading.Event(),
        job_timeout_seconds=settings.job_timeout_seconds,
    )


def serve_job(db: Database, job_id: str, context: WorkerContext, settings: Settings) -> JobStatus:
    """Run one claimed job with a heartbeat beside it."""
    log.info("worker %s: running job %s", context.worker_id, job_id)
    with _Heartbeat(db, job_id, context.worker_id, settings.heartbeat_seconds):
        status = run_job(db, job_id, context)
    log.info("worker %s: job %s ended %s", context.worker_id, job_id, status)
    # Its webhook, if it asked for one, goes now rather than at the next sweep.
    try:
        webhooks.deliver_due(db, settings, job_id=job_id)
    except Exception:
        log.exception("webhook of job %s: left to the sweep", job_id)
    return status


# Retention runs at most this often per worker process, in a thread of its own (the worker
# goes on taking jobs), in batches of PRUNE_BATCH rows, each its own short transaction. After
# each batch it rests PRUNE_REST_FACTOR times as long as the batch took (PRUNE_PAUSE_SECONDS
# at least), so a prune holds SQLite's write lock at most about 2 % of the time, a few
# milliseconds at a time: submissions and predictions go on at their usual p99 while it runs
# (benchmarks/retention.py). Detailed events go PRUNE_EVENT_JOBS jobs' worth at a time.
PRUNE_EVERY_SECONDS = 600.0
PRUNE_BATCH = 100
PRUNE_EVENT_JOBS = 10
PRUNE_PAUSE_SECONDS = 0.05
PRUNE_REST_FACTOR = 50.0
_last_prune = -PRUNE_EVERY_SECONDS
_pruner: threading.Thread | None = None
_events_cursor = queue.PruneCursor()
_prune_stop = threading.Event()


def sweep(db: Database, settings: Settings) -> list[str]:
    """Recover jobs of lost workers; returns those put back in the queue.

    Also, every PRUNE_EVERY_SECONDS at most, starts pruning what the retention settings let
    go (jobs, detailed events) in a thread of its own.
    """
    global _last_prune
    with db.session_scope() as session:
        recovered = queue.requeue_stale(
            session, stale_after=settings.stale_after_seconds, max_attempts=settings.max_attempts
        )
    if time.monotonic() - _last_prune >= PRUNE_EVERY_SECONDS and not pruning():
        _last_prune = time.monotonic()
        _start_pruning(db, settings)
    # Webhooks due: retries, and those of jobs ended without a worker (a queued job cancelled).
    webhooks.deliver_due(db, settings)
    if not recovered:
        return []
    with db.read_scope() as session:
        return queue.queued_among(session, recovered)


def pruning() -> bool:
    """Whether this process's prune thread is still at work."""
    return _pruner is not None and _pruner.is_alive()


def wait_for_pruning(timeout: float | None = None) -> None:
    if _pruner is not None:
        _pruner.join(timeout)


def stop_pruning(timeout: float = 5.0) -> None:
    """Ask the prune thread to stop after its current batch, and wait for it a while."""
    _prune_stop.set()
    wait_for_pruning(timeout)
    _prune_stop.clear()


def _start_pruning(db: Database, settings: Settings) -> None:
    global _pruner

    def run() -> None:
        try:
            prune(db, settings, _prune_stop)
        except Exception:  # the next sweep's prune tries again
            log.exception("pruning old jobs failed")

    _pruner = threading.Thread(target=run, name="graft-prune", daemon=True)
    _pruner.start()


def prune(db: Database, settings: Settings, stop: threading.Event | None = None) -> None:
    """Apply the retention settings: finished jobs (GRAFT_JOB_RETENTION_DAYS), then the
    detailed events of the rest (GRAFT_JOB_EVENTS_RETENTION_DAYS), a batch at a time."""
    pauses = stop or threading.Event()
    # A job's detailed events are many rows (one per epoch): fewer jobs a batch. The walk
    # goes on where the last prune of this process stopped: jobs end in order of
    # `finished_at`, so those before the cursor were stripped already.
    events_of = partial(queue.prune_events, cursor=_events_cursor)
    for days, step, batch, what in (
        (settings.job_retention_days, queue.prune_jobs, PRUNE_BATCH, "jobs"),
        (settings.job_events_retention_days, events_of, PRUNE_EVENT_JOBS, "jobs' events"),
    ):
        if days <= 0:
            continue
        total = 0
        while not pauses.is_set():
            began = time.monotonic()
            with db.session_scope() as session:
                removed = step(session, older_than_days=days, limit=batch)
            total += removed
            if removed < batch:
                break
            took = time.monotonic() - began
            pauses.wait(max(PRUNE_PAUSE_SECONDS, PRUNE_REST_FACTOR * took))
        if total:
            log.info("pruned %d %s that ended over %g days ago", total, what, days)


def _install_stop_signals(context: WorkerContext) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def _request_stop(signum: int, _frame: FrameType | None) -> None:
        log.info("worker %s: signal %d, stopping after this epoch", context.worker_id, signum)
        context.stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)


def _sleep_until_woken(wakeup: ProcessEvent, stop: threading.Event, seconds: float) -> bool:
    """Wait for `wakeup` up to `seconds`; True if it came. Waits in slices so that a stop
    request (a signal handler may not touch `wakeup`'s locks) is seen within half a second."""
    deadline = time.monotonic() + seconds
    while not stop.is_set():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        if wakeup.wait(min(left, 0.5)):
            return True
    return False


def run_worker(
    settings: Settings,
    stop: threading.Event | None = None,
    wakeup: ProcessEvent | None = None,
) -> None:
    """Claim and run jobs until `stop` is set (SIGTERM and SIGINT set it too).

    An idle worker sleeps until `wakeup` is set (the API sets it when it queues a job) or
    the poll period passes; without `wakeup` (a standalone `graft worker`) it only polls.
    """
    prepare_torch(settings)
    context = new_context(settings, stop)
    _install_stop_signals(context)
    db = Database(settings.resolved_database_url)
    log.info("worker %s started", context.worker_id)
    last_sweep = 0.0
    try:
        while not context.stop.is_set():
            if time.monotonic() - last_sweep >= settings.sweep_seconds:
                last_sweep = time.monotonic()
                sweep(db, settings)
            with db.session_scope() as session:
                job_id = queue.claim_next(session, context.worker_id)
            if job_id is not None:
                serve_job(db, job_id, context, settings)
            elif wakeup is None:
                context.stop.wait(settings.worker_poll_seconds)
            elif _sleep_until_woken(wakeup, context.stop, settings.worker_poll_seconds):
                # Cleared before the next claim: a job queued after this point sets it
                # again, so no wake-up is lost.
                wakeup.clear()
    finally:
        stop_pruning()
        db.dispose()
        log.info("worker %s stopped", context.worker_id)


def _worker_process_main(settings: Settings, wakeup: ProcessEvent) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    run_worker(settings, wakeup=wakeup)


class LocalWorkerPool:
    """The embedded default: `settings.workers` processes, restarted if one dies.

    With a `runtime_dir` (`graft serve --processes N`: one pool for N API processes), the
    pool also publishes its workers' pids there for the API processes' readiness checks, and
    wakes its workers when an API process bumps the `jobs-queued` counter there.
    """

    def __init__(self, settings: Settings, runtime_dir: Path | None = None) -> None:
        self._settings = settings
        self._runtime_dir = runtime_dir
        # spawn, not fork: the API process holds threads and database connections.
        self._context = multiprocessing.get_context("spawn")
        # Shared with every child: set when a job is queued, so an idle worker claims it
        # at once instead of at its next poll.
        self._wakeup = self._context.Event()
        self._processes: list[BaseProcess] = []
        self._closing = threading.Event()
        self._supervisor: threading.Thread | None = None
        self._relay: threading.Thread | None = None

    def start(self) -> None:
        self._processes = [self._spawn() for _ in range(self._settings.workers)]
        self._supervisor = threading.Thread(target=self._supervise, name="workers", daemon=True)
        self._supervisor.start()
        if self._runtime_dir is not None:
            self._publish()
            self._relay = threading.Thread(target=self._relay_wakeups, name="wakeups", daemon=True)
            self._relay.start()

    def _spawn(self) -> BaseProcess:
        process = self._context.Process(
            target=_worker_process_main,
            args=(self._settings, self._wakeup),
            name="graft-worker",
            daemon=True,
        )
        process.start()
        return process

    def _supervise(self) -> None:
        while not self._closing.wait(1.0):
            for index, process in enumerate(self._processes):
                if not process.is_alive() and not self._closing.is_set():
                    log.warning(
                        "worker pid %s exited (%s); starting another", process.pid, process.exitcode
                    )
                    self._processes[index] = self._spawn()
                    if self._runtime_dir is not None:
                        self._publish()

    def job_queued(self, job_id: str) -> None:
        """Wake the idle workers; one of them claims the job."""
        self._wakeup.set()

    def alive(self) -> int:
        return sum(process.is_alive() for process in self._processes)

    def pids(self) -> list[int]:
        return [process.pid for process in self._processes if process.pid is not None]

    def _publish(self) -> None:
        assert self._runtime_dir is not None
        status = self._runtime_dir / WORKERS_FILE
        partial = status.with_suffix(".partial")
        partial.write_text(json.dumps({"expected": self._settings.workers, "pids": self.pids()}))
        os.replace(partial, status)

    def _relay_wakeups(self) -> None:
        """API processes cannot reach `_wakeup` (uvicorn starts them); they bump a counter
        instead, which this thread turns into a wake-up within RELAY_SECONDS."""
        assert self._runtime_dir is not None
        counter = changes.map_counter(self._runtime_dir / JOBS_QUEUED_FILE)
        if counter is None:
            return
        seen = counter[:8]
        while not self._closing.wait(RELAY_SECONDS):
            now = counter[:8]
            if now != seen:
                seen = now
                self._wakeup.set()

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM every worker (each hands its job back at the next epoch), then wait."""
        self._closing.set()
        if self._supervisor is not None:
            self._supervisor.join()
        if self._relay is not None:
            self._relay.join()
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        deadline = time.monotonic() + timeout
        for process in self._processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()


class SupervisedWorkers:
    """An API process's handle on the local workers that its `graft serve --processes N`
    parent runs: it wakes them when it queues a job, and reads how many are alive."""

    def __init__(self, runtime_dir: Path) -> None:
        self._status = runtime_dir / WORKERS_FILE
        self._queued = runtime_dir / JOBS_QUEUED_FILE

    def job_queued(self, job_id: str) -> None:
        changes.bump_counter(self._queued)

    def alive(self) -> int:
        try:
            pids = json.loads(self._status.read_text())["pids"]
        except (OSError, ValueError, KeyError):
            return 0
        return sum(is_running(pid) for pid in pids)

    def stop(self) -> None:
        """The parent stops the workers."""
