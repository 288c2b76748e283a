import threading
import time
from typing import Any

from fastapi.testclient import TestClient

from app.db.session import Database
from app.enums import JobStatus
from app.jobs import queue
from app.jobs.runner import WorkerContext, run_job
from tests.helpers import builtin, run_pending_jobs, upload


def submit(client: TestClient, dataset_id: str, **hyper: Any) -> str:
    body = {
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": "m",
        "hyperparameters": {"epochs": 5, **hyper},
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
        events = client.get(f"/v1/jobs/{job_id}/events", params={"after": 3}).json()["data"]
        assert "returned to the queue" in events[-1]["message"]


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
        assert "learning_rate" in job["error"]["message"]

    def test_same_seed_same_weights(self, client: TestClient, database: Database) -> None:
        dataset = builtin(client, "wine")["id"]
        submit(client, dataset, seed=3)
        submit(client, dataset, seed=3)
        submit(client, dataset, seed=4)
        run_pending_jobs(database)
        digests = [client.get(f"/v1/models/m/versions/{n}").json()["sha256"] for n in (1, 2, 3)]
        assert digests[0] == digests[1] != digests[2]
