import os
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app.config import Settings
from app.db.models import Job
from app.db.session import Database
from app.enums import JobStatus
from app.ids import utcnow
from app.jobs import queue, worker
from tests.helpers import builtin

# Database-level behaviour: also run on PostgreSQL when GRAFT_TEST_DATABASE_URL is set.
pytestmark = pytest.mark.postgres


def queue_jobs(client: TestClient, count: int) -> list[str]:
    dataset = builtin(client, "iris")
    body = {"dataset_id": dataset["id"], "target_column": "target", "model_name": "m"}
    return [client.post("/v1/jobs/source-training", json=body).json()["id"] for _ in range(count)]


def job(database: Database, job_id: str) -> Job:
    with database.read_scope() as session:
        found = session.get(Job, job_id)
        assert found is not None
        return found


class TestClaim:
    def test_oldest_first_and_marks_running(self, client: TestClient, database: Database) -> None:
        ids = queue_jobs(client, 2)
        with database.session_scope() as session:
            assert queue.claim_next(session, "w1") == ids[0]
        claimed = job(database, ids[0])
        assert claimed.status == JobStatus.RUNNING and claimed.worker_id == "w1"
        assert claimed.attempts == 1 and claimed.started_at is not None

    def test_racing_workers_claim_each_job_exactly_once(
        self, client: TestClient, database: Database
    ) -> None:
        ids = queue_jobs(client, 30)
        claims: dict[str, list[str]] = {}
        barrier = threading.Barrier(4)

        def worker(name: str) -> None:
            own = Database(database.url)
            barrier.wait()
            while True:
                with own.session_scope() as session:
                    claimed = queue.claim_next(session, name)
                if claimed is None:
                    break
                claims.setdefault(claimed, []).append(name)
            own.dispose()

        threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(claims) == sorted(ids)
        assert all(len(workers) == 1 for workers in claims.values())

    def test_empty_queue(self, database: Database) -> None:
        with database.session_scope() as session:
            assert queue.claim_next(session, "w") is None

    def test_claim_by_id_only_while_queued(self, client: TestClient, database: Database) -> None:
        first, second = queue_jobs(client, 2)
        with database.session_scope() as session:
            assert queue.claim(session, second, "w1") is True
        with database.session_scope() as session:
            assert queue.claim(session, second, "w2") is False  # a message delivered twice
            assert queue.claim(session, "job_unknown", "w2") is False
        assert job(database, second).worker_id == "w1"
        assert job(database, first).status == JobStatus.QUEUED
        with database.read_scope() as session:
            assert queue.queued_among(session, [first, second]) == [first]
            assert queue.queued_before(session, seconds_ago=0) == [first]
            assert queue.queued_before(session, seconds_ago=3600) == []


class TestRecovery:
    def claim_and_silence(self, database: Database, job_id: str, worker_id: str) -> None:
        with database.session_scope() as session:
            assert queue.claim_next(session, worker_id) == job_id
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(heartbeat_at=utcnow() - timedelta(seconds=600))
            )

    def sweep(self, database: Database, **kwargs: Any) -> list[str]:
        with database.session_scope() as session:
            return queue.requeue_stale(session, **{"stale_after": 60, "max_attempts": 2, **kwargs})

    def test_stale_job_is_requeued_then_failed_worker_lost(
        self, client: TestClient, database: Database
    ) -> None:
        [job_id] = queue_jobs(client, 1)
        self.claim_and_silence(database, job_id, "elsewhere:1:a")
        assert self.sweep(database) == [job_id]
        assert job(database, job_id).status == JobStatus.QUEUED
        self.claim_and_silence(database, job_id, "elsewhere:1:b")
        assert self.sweep(database) == [job_id]
        failed = job(database, job_id)
        assert failed.status == JobStatus.FAILED and failed.error_code == "worker_lost"
        assert "2 time(s)" in (failed.error_message or "")
        events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
        assert any(e["type"] == "warning" and "back to the queue" in e["message"] for e in events)

    def test_worker_sweep_returns_only_what_must_be_published_again(
        self, client: TestClient, database: Database, settings: Settings
    ) -> None:
        # What a Celery worker's sweep republishes: requeued jobs, not failed ones.
        [job_id] = queue_jobs(client, 1)
        self.claim_and_silence(database, job_id, "elsewhere:1:a")
        assert worker.sweep(database, settings) == [job_id]
        self.claim_and_silence(database, job_id, "elsewhere:1:b")
        assert worker.sweep(database, settings) == []
        assert job(database, job_id).error_code == "worker_lost"

    def test_fresh_heartbeat_is_left_alone(self, client: TestClient, database: Database) -> None:
        [job_id] = queue_jobs(client, 1)
        with database.session_scope() as session:
            queue.claim_next(session, "elsewhere:1:a")
        assert self.sweep(database) == []
        assert job(database, job_id).status == JobStatus.RUNNING

    def test_dead_local_process_is_recovered_at_once(
        self, client: TestClient, database: Database
    ) -> None:
        [job_id] = queue_jobs(client, 1)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        dead_worker = queue.make_worker_id().split(":")[0] + f":{pid}:x"
        with database.session_scope() as session:
            queue.claim_next(session, dead_worker)
        assert self.sweep(database) == [job_id]
        assert job(database, job_id).status == JobStatus.QUEUED

    def test_killed_but_unreaped_local_process_is_recovered_at_once(
        self, client: TestClient, database: Database
    ) -> None:
        [job_id] = queue_jobs(client, 1)
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        try:
            time.sleep(0.2)  # exited, but a zombie until waited for
            zombie = queue.make_worker_id().split(":")[0] + f":{pid}:x"
            with database.session_scope() as session:
                queue.claim_next(session, zombie)
            assert self.sweep(database) == [job_id]
        finally:
            os.waitpid(pid, 0)

    def test_heartbeat_only_for_the_owner(self, client: TestClient, database: Database) -> None:
        [job_id] = queue_jobs(client, 1)
        with database.session_scope() as session:
            queue.claim_next(session, "w1")
            assert queue.heartbeat(session, job_id, "w1") is True
            assert queue.heartbeat(session, job_id, "w2") is False
