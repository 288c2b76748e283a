import re
import threading
import time
from datetime import datetime
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from app.db.session import Database
from app.enums import JobStatus
from app.jobs import queue
from app.jobs.runner import WorkerContext, run_job
from tests.helpers import assert_problem, builtin, run_pending_jobs, upload

# Database-level behaviour: also run on PostgreSQL when GRAFT_TEST_DATABASE_URL is set.
pytestmark = pytest.mark.postgres


def submit(
    client: TestClient, dataset_id: str, timeout_seconds: int | None = None, **hyper: Any
) -> str:
    body = {
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": "m",
        "hyperparameters": {"epochs": 5, **hyper},
        "timeout_seconds": timeout_seconds,
    }
    response = client.post("/v1/jobs/source-training", json=body)
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def run_in_thread(database: Database, context: WorkerContext) -> tuple[threading.Thread, dict]:
    outcome: dict[str, JobStatus] = {}

    def target() -> None:
        with database.session_scope() as session:
            job_id = queue.claim_next(session, context.worker_id)
        assert job_id is not None
        outcome["status"] = run_job(database, job_id, context)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def wait_for_epoch(client: TestClient, job_id: str, epoch: int) -> None:
    deadline = time.monotonic() + 60
    while client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] < epoch:
        assert time.monotonic() < deadline, "the job never reached the epoch"
        time.sleep(0.05)


class TestCancelAndStop:
    def test_cancel_running_job_stops_at_next_epoch(
        self, client: TestClient, database: Database
    ) -> None:
        job_id = submit(client, builtin(client, "iris")["id"], epochs=10_000)
        thread, outcome = run_in_thread(database, WorkerContext(queue.make_worker_id()))
        wait_for_epoch(client, job_id, 2)
        response = client.post(f"/v1/jobs/{job_id}/cancel")
        assert response.status_code == 202 and response.json()["cancel_requested"]
        thread.join(60)
        assert outcome["status"] == JobStatus.CANCELLED
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "cancelled" and job["result"] is None
        assert job["progress"]["epoch"] < 10_000
        assert client.get("/v1/models").json()["data"] == []

    def test_worker_shutdown_hands_the_job_back(
        self, client: TestClient, database: Database
    ) -> None:
        job_id = submit(client, builtin(client, "iris")["id"], epochs=10_000)
        context = WorkerContext(queue.make_worker_id())
        thread, outcome = run_in_thread(database, context)
        wait_for_epoch(client, job_id, 2)
        context.stop.set()
        thread.join(60)
        assert outcome["status"] == JobStatus.QUEUED
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "queued" and job["attempts"] == 0
        events = all_events(client, job_id)
        assert "returned to the queue" in events[-1]["message"]
        epochs = [e["data"]["epoch"] for e in events if e["type"] == "metrics"]
        # Every epoch that ran was written before the hand-back, even between flushes.
        assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) >= 2


def all_events(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        params = {"after": events[-1]["seq"] if events else 0, "limit": 200}
        page = client.get(f"/v1/jobs/{job_id}/events", params=params).json()
        events += page["data"]
        if not page["has_more"]:
            return events


class TestEventBatching:
    def test_every_epoch_is_written_in_order_before_the_final_status(
        self, client: TestClient, database: Database
    ) -> None:
        # Hundreds of millisecond epochs: most events wait in the reporter between flushes.
        job_id = submit(client, builtin(client, "iris")["id"], epochs=300)
        run_pending_jobs(database)
        events = all_events(client, job_id)
        epochs = [e["data"]["epoch"] for e in events if e["type"] == "metrics"]
        assert epochs == list(range(1, 301))
        assert events[-1]["type"] == "status" and events[-1]["data"]["status"] == "succeeded"
        assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
        assert client.get(f"/v1/jobs/{job_id}").json()["progress"]["epoch"] == 300

    def test_a_failure_mid_training_keeps_the_epochs_before_it(
        self, client: TestClient, database: Database
    ) -> None:
        dataset = builtin(client, "diabetes")["id"]
        job_id = submit(client, dataset, optimizer="sgd", learning_rate=0.5, epochs=50)
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["error"]["code"] == "diverged"
        events = all_events(client, job_id)
        failed_at = int(re.search(r"epoch (\d+)", job["error"]["message"]).group(1))
        assert failed_at > 1  # the setup must train a few epochs before diverging
        epochs = [e["data"]["epoch"] for e in events if e["type"] == "metrics"]
        assert epochs == list(range(1, failed_at))
        assert events[-1]["data"]["code"] == "diverged"


class TestFailures:
    def test_bad_values_fail_the_job_with_a_clear_code(
        self, client: TestClient, database: Database
    ) -> None:
        dataset = upload(client, "gap.csv", b"x,target\n1,a\n,b\n3,a\n4,b\n").json()
        job_id = submit(client, dataset["id"])
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed"
        assert job["error"]["code"] == "invalid_data"
        assert "'x'" in job["error"]["message"]
        assert client.get("/v1/models").json()["data"] == []

    def test_divergence_fails_with_diverged(self, client: TestClient, database: Database) -> None:
        job_id = submit(
            client,
            builtin(client, "diabetes")["id"],
            optimizer="sgd",
            learning_rate=10.0,
            epochs=50,
        )
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "diverged"
        assert re.search(r"at epoch \d+: .*try a lower learning_rate", job["error"]["message"])
        assert client.get("/v1/models").json()["data"] == []

    def test_a_failure_while_recording_the_result_fails_the_job(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def broken(*_args: Any, **_kwargs: Any) -> None:
            raise RuntimeError("disk full")

        monkeypatch.setattr("app.services.registry.register_version", broken)
        job_id = submit(client, builtin(client, "iris")["id"])
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed", job  # not left running until it looks lost
        assert job["error"]["code"] == "internal_error"
        message = job["error"]["message"]
        assert "recording it failed because of an internal error (RuntimeError)" in message
        assert job_id in message and "disk full" not in message  # details stay in the log
        assert job["result"] is None

    def test_same_seed_same_weights(self, client: TestClient, database: Database) -> None:
        dataset = builtin(client, "wine")["id"]
        submit(client, dataset, seed=3)
        submit(client, dataset, seed=3)
        submit(client, dataset, seed=4)
        run_pending_jobs(database)
        digests = [client.get(f"/v1/models/m/versions/{n}").json()["sha256"] for n in (1, 2, 3)]
        assert digests[0] == digests[1] != digests[2]


class TestTimeLimit:
    def test_job_past_its_time_limit_fails_with_timeout(
        self, client: TestClient, database: Database
    ) -> None:
        # A process's first optimizer imports torch._dynamo (seconds), as a worker does at
        # start-up; without this the limit could pass before the first epoch when run alone.
        torch.optim.Adam([torch.zeros(1, requires_grad=True)])
        job_id = submit(client, builtin(client, "iris")["id"], timeout_seconds=1, epochs=10_000)
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["status"] == "failed", job
        assert job["error"]["code"] == "timeout"
        assert "time limit of 1 s" in job["error"]["message"]
        assert "timeout_seconds" in job["error"]["message"]
        assert 0 < job["progress"]["epoch"] < 10_000
        assert 1 <= job["progress"]["elapsed_seconds"] < 30
        assert client.get("/v1/models").json()["data"] == []
        final = all_events(client, job_id)[-1]
        assert final["data"] == {"status": "failed", "code": "timeout"}

    def test_server_default_applies_and_a_long_epoch_cannot_overrun_it(
        self, client: TestClient, database: Database
    ) -> None:
        # One epoch of digits at batch size 1 is ~1400 optimiser steps, far beyond the limit.
        dataset = builtin(client, "digits")["id"]
        job_id = submit(client, dataset, epochs=3, batch_size=1)
        context = WorkerContext(queue.make_worker_id(), job_timeout_seconds=0.2)
        thread, outcome = run_in_thread(database, context)
        thread.join(60)
        assert outcome["status"] == JobStatus.FAILED
        job = client.get(f"/v1/jobs/{job_id}").json()
        assert job["error"]["code"] == "timeout", job["error"]
        assert "time limit of 0.2 s" in job["error"]["message"]
        assert job["progress"]["epoch"] == 0  # stopped inside the first epoch
        assert job["progress"]["elapsed_seconds"] < 10

    def test_request_limit_wins_over_the_server_default(
        self, client: TestClient, database: Database
    ) -> None:
        job_id = submit(client, builtin(client, "iris")["id"], timeout_seconds=600)
        context = WorkerContext(queue.make_worker_id(), job_timeout_seconds=0.001)
        thread, outcome = run_in_thread(database, context)
        thread.join(60)
        assert outcome["status"] == JobStatus.SUCCEEDED
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"

    @pytest.mark.parametrize("value", [0, -1, 7 * 86_400 + 1, "soon"])
    def test_out_of_range_time_limit_is_422(self, client: TestClient, value: Any) -> None:
        dataset = builtin(client, "iris")["id"]
        response = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": dataset,
                "target_column": "target",
                "model_name": "m",
                "timeout_seconds": value,
            },
        )
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"][-1] == "timeout_seconds"


class TestProgress:
    def test_running_job_reports_elapsed_and_estimated_finish(
        self, client: TestClient, database: Database
    ) -> None:
        job_id = submit(client, builtin(client, "iris")["id"], epochs=10_000)
        thread, _ = run_in_thread(database, WorkerContext(queue.make_worker_id()))
        wait_for_epoch(client, job_id, 3)
        progress = client.get(f"/v1/jobs/{job_id}").json()["progress"]
        assert progress["epochs"] == 10_000 and progress["epoch"] >= 3
        assert progress["elapsed_seconds"] > 0
        # Thousands of epochs remain, each taking about what the first ones took.
        assert progress["eta_seconds"] > 0
        finish = datetime.fromisoformat(progress["estimated_finish_at"])
        assert finish > datetime.fromisoformat(
            client.get(f"/v1/jobs/{job_id}").json()["started_at"]
        )
        client.post(f"/v1/jobs/{job_id}/cancel")
        thread.join(60)
        done = client.get(f"/v1/jobs/{job_id}").json()
        assert done["status"] == "cancelled"
        assert done["progress"]["eta_seconds"] == 0
        assert done["progress"]["estimated_finish_at"] == done["finished_at"]
        assert done["progress"]["elapsed_seconds"] >= progress["elapsed_seconds"]
