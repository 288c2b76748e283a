"""Helpers shared by the tests: inline job running, uploads, problem assertions."""

import io
from typing import Any

import pandas as pd
from fastapi.testclient import TestClient

from app.db.session import Database
from app.jobs import queue
from app.jobs.runner import WorkerContext, run_job


def run_pending_jobs(database: Database) -> list[str]:
    """Run every queued job in this process, as a worker would; returns their ids."""
    context = WorkerContext(worker_id=queue.make_worker_id())
    ran = []
    while True:
        with database.session_scope() as session:
            job_id = queue.claim_next(session, context.worker_id)
        if job_id is None:
            return ran
        run_job(database, job_id, context)
        ran.append(job_id)


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def upload(client: TestClient, name: str, content: bytes, media: str = "text/csv") -> Any:
    return client.post("/v1/datasets", files={"file": (name, io.BytesIO(content), media)})


def builtin(client: TestClient, name: str = "iris", **fields: Any) -> dict[str, Any]:
    response = client.post("/v1/datasets/builtin", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


FAST = {"epochs": 30, "learning_rate": 0.02, "batch_size": 16, "seed": 0}


def train_source(
    client: TestClient, database: Database, dataset_id: str, model_name: str = "src", **extra: Any
) -> dict[str, Any]:
    """Submit a small source-training job and run it inline; returns the finished job."""
    body = {
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": model_name,
        "architecture": {"hidden_layers": [10, 10]},
        "hyperparameters": FAST,
        **extra,
    }
    response = client.post("/v1/jobs/source-training", json=body)
    assert response.status_code == 202, response.text
    run_pending_jobs(database)
    job: dict[str, Any] = client.get(f"/v1/jobs/{response.json()['id']}").json()
    assert job["status"] == "succeeded", job
    return job


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["code"] == code, body
    assert body["status"] == status
    assert body["title"] and body["detail"] and body["type"].endswith(code)
    return body


STRATEGIES = ("parameter", "feature", "structure")


def build_iris_example(client: TestClient, database: Database) -> dict[str, Any]:
    """The design's worked example: source on Iris rows 0-99, each strategy on rows 100-149."""
    source = builtin(client, "iris", start=0, stop=100)
    target = builtin(client, "iris", start=100, stop=150)
    train_source(client, database, source["id"], "iris-source")
    for strategy in STRATEGIES:
        response = client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "iris-source", "version": 1},
                "dataset_id": target["id"],
                "target_column": "target",
                "model_name": f"iris-{strategy}",
                "strategy": strategy,
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202, response.text
    run_pending_jobs(database)
    diabetes = builtin(client, "diabetes")
    train_source(client, database, diabetes["id"], "diabetes")
    return {"source": source, "target": target, "diabetes": diabetes}
