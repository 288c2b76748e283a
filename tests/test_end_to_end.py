"""The design's Iris example over HTTP, with real worker processes started by the service."""

import os
import signal
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.helpers import STRATEGIES, builtin

pytestmark = pytest.mark.slow


def wait_for(client: TestClient, job_id: str, statuses: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job stuck in {job['status']}: {job}"
        time.sleep(0.1)


@pytest.fixture
def served(settings: Settings) -> Iterator[TestClient]:
    live = settings.model_copy(update={"workers": 1, "worker_poll_seconds": 0.1})
    with TestClient(create_app(live), raise_server_exceptions=False) as client:
        yield client


def test_iris_example_with_a_real_worker(served: TestClient) -> None:
    client = served
    source = builtin(client, "iris", start=0, stop=100)
    target = builtin(client, "iris", start=100, stop=150)
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": source["id"],
            "target_column": "target",
            "model_name": "iris-source",
            "architecture": {"type": "mlp", "hidden_layers": [10, 10]},
            "hyperparameters": {"epochs": 60, "learning_rate": 0.01, "seed": 0},
        },
    )
    assert response.status_code == 202
    job = wait_for(client, response.json()["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    assert job["result"] == {"model_name": "iris-source", "version": 1}
    assert job["metrics"]["validation"]["accuracy"] >= 0.9

    jobs = {}
    for strategy in STRATEGIES:
        response = client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "iris-source", "version": 1},
                "dataset_id": target["id"],
                "target_column": "target",
                "model_name": f"iris-{strategy}",
                "strategy": strategy,
                "hyperparameters": {"epochs": 30, "learning_rate": 0.01},
            },
        )
        assert response.status_code == 202, response.text
        jobs[strategy] = response.json()["id"]
    for strategy, job_id in jobs.items():
        job = wait_for(client, job_id, {"succeeded", "failed"})
        assert job["status"] == "succeeded", job["error"]
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()["data"]
        assert any(e["type"] == "warning" and "single class" in e["message"] for e in events)
        prediction = client.post(
            f"/v1/models/iris-{strategy}/predict", json={"instances": [[6.7, 3.0, 5.2, 2.3]]}
        ).json()
        assert prediction["model"] == {"name": f"iris-{strategy}", "version": 1}
        assert prediction["classes"] == ["setosa", "versicolor", "virginica"]
    # Fine-tuned on virginica alone, the feature-transfer head learns to say virginica.
    feature = client.post(
        "/v1/models/iris-feature/predict", json={"instances": [[6.7, 3.0, 5.2, 2.3]]}
    ).json()
    assert feature["predictions"] == ["virginica"]
    source_prediction = client.post(
        "/v1/models/iris-source/predict", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
    ).json()
    assert source_prediction["predictions"] == ["setosa"]


def running_worker_pid(client: TestClient, job_id: str) -> int:
    deadline = time.monotonic() + 60
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] == "running" and job["progress"]["epoch"] >= 3:
            events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
            worker = next(
                e["data"]["worker"]
                for e in events
                if e["data"] and e["data"].get("status") == "running"
            )
            return int(worker.split(":")[1])
        assert time.monotonic() < deadline, job
        time.sleep(0.05)


@pytest.mark.parametrize("max_attempts", [1, 2])
def test_killed_worker_never_leaves_a_job_stuck(settings: Settings, max_attempts: int) -> None:
    live = settings.model_copy(
        update={
            "workers": 1,
            "worker_poll_seconds": 0.1,
            "max_attempts": max_attempts,
            "heartbeat_seconds": 0.5,
            "stale_after_seconds": 30,
        }
    )
    with TestClient(create_app(live), raise_server_exceptions=False) as client:
        dataset = builtin(client, "iris")
        job_id = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": dataset["id"],
                "target_column": "target",
                "model_name": "victim",
                "hyperparameters": {"epochs": 10_000},
            },
        ).json()["id"]
        os.kill(running_worker_pid(client, job_id), signal.SIGKILL)
        if max_attempts == 1:
            job = wait_for(client, job_id, {"failed", "succeeded", "cancelled"}, timeout=60)
            assert job["status"] == "failed"
            assert job["error"]["code"] == "worker_lost"
        else:
            # The replacement worker finds the dead process and puts the job back.
            deadline = time.monotonic() + 60
            while True:
                events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 200}).json()[
                    "data"
                ]
                if any("back to the queue" in e["message"] for e in events):
                    break
                assert time.monotonic() < deadline, "the job was never requeued"
                time.sleep(0.1)
            client.post(f"/v1/jobs/{job_id}/cancel")
            job = wait_for(client, job_id, {"cancelled", "failed", "succeeded"}, timeout=60)
            assert job["status"] == "cancelled"
            assert job["attempts"] >= 1
        assert client.get("/v1/models").json()["data"] == []


def test_an_idle_worker_is_woken_when_a_job_is_queued(settings: Settings) -> None:
    # A poll period far longer than the test: only the wake-up can start the jobs quickly.
    live = settings.model_copy(update={"workers": 1, "worker_poll_seconds": 60})
    with TestClient(create_app(live), raise_server_exceptions=False) as client:
        dataset = builtin(client, "iris")
        body = {
            "dataset_id": dataset["id"],
            "target_column": "target",
            "model_name": "prompt",
            "hyperparameters": {"epochs": 1},
        }
        # The first job proves the worker is up; after it the worker sleeps, idle.
        first = client.post("/v1/jobs/source-training", json=body).json()
        wait_for(client, first["id"], {"succeeded"}, timeout=60)
        for _ in range(3):
            time.sleep(0.3)  # let the worker go back to sleep
            job = client.post("/v1/jobs/source-training", json=body).json()
            done = wait_for(client, job["id"], {"succeeded"}, timeout=20)
            created = datetime.fromisoformat(done["created_at"])
            started = datetime.fromisoformat(done["started_at"])
            assert (started - created).total_seconds() < 5, done
