"""Scale-out on Celery: two worker processes on a real Redis broker and PostgreSQL."""

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.config import Settings
from app.db import migrate
from app.db.models import ModelVersion
from app.db.session import Database
from app.main import create_app
from tests.conftest import fresh_postgres_database
from tests.helpers import FAST, builtin

pytestmark = pytest.mark.slow

BROKER_VARIABLE = "GRAFT_TEST_BROKER_URL"
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def celery_settings(tmp_path: Path) -> Iterator[Settings]:
    broker = os.environ.get(BROKER_VARIABLE)
    if not broker:
        pytest.skip(
            f"set {BROKER_VARIABLE}=redis://127.0.0.1:6379/0 and GRAFT_TEST_DATABASE_URL="
            "postgresql+psycopg://user@host:5432/db to run the Celery test"
        )
    with fresh_postgres_database("celery") as url:
        migrate.upgrade(url)
        yield Settings(
            data_dir=tmp_path,
            database_url=url,
            executor="celery",
            broker_url=broker,
            # A queue (and Redis key prefix) of its own: test runs never share messages.
            celery_queue=f"graft-test-{os.getpid()}-{secrets.token_hex(3)}",
            workers=0,
            sweep_seconds=0.5,
            heartbeat_seconds=0.5,
            stale_after_seconds=15,
            log_level="warning",
        )
        _forget_queue(broker, f"graft-test-{os.getpid()}")


def _forget_queue(broker: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(broker)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def start_workers(settings: Settings, count: int, logs: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "GRAFT_DATABASE_URL": settings.resolved_database_url,
        "GRAFT_EXECUTOR": "celery",
        "GRAFT_BROKER_URL": settings.broker_url or "",
        "GRAFT_CELERY_QUEUE": settings.celery_queue,
        "GRAFT_SWEEP_SECONDS": str(settings.sweep_seconds),
        "GRAFT_HEARTBEAT_SECONDS": str(settings.heartbeat_seconds),
        "GRAFT_STALE_AFTER_SECONDS": str(settings.stale_after_seconds),
        "GRAFT_LOG_LEVEL": "info",
    }
    workers = []
    for index in range(count):
        log = (logs / f"worker-{index}.log").open("wb")
        workers.append(
            subprocess.Popen(
                [sys.executable, "-m", "app.cli", "worker", "--executor", "celery"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        )
    return workers


def submit(client: TestClient, dataset_id: str, name: str, epochs: int) -> str:
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": dataset_id,
            "target_column": "target",
            "model_name": name,
            "hyperparameters": {**FAST, "epochs": epochs},
        },
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def wait_all(client: TestClient, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        jobs = [client.get(f"/v1/jobs/{job_id}").json() for job_id in ids]
        if all(job["status"] in FINAL for job in jobs):
            return jobs
        stuck = {job["id"]: job["status"] for job in jobs if job["status"] not in FINAL}
        assert time.monotonic() < deadline, f"jobs never finished: {stuck}"
        time.sleep(0.2)


def versions_per_job(settings: Settings) -> dict[str, int]:
    db = Database(settings.resolved_database_url)
    with db.read_scope() as session:
        rows = session.execute(
            select(ModelVersion.job_id, func.count()).group_by(ModelVersion.job_id)
        ).all()
    db.dispose()
    return {job_id: count for job_id, count in rows}


def running_worker_pid(client: TestClient, ids: list[str]) -> tuple[str, int]:
    deadline = time.monotonic() + 60
    while True:
        for job_id in ids:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["status"] == "running" and job["progress"]["epoch"] >= 2:
                events = client.get(f"/v1/jobs/{job_id}/events").json()["data"]
                worker = [e["data"]["worker"] for e in events if e["message"] == "job running"]
                return job_id, int(worker[-1].split(":")[1])
        assert time.monotonic() < deadline, "no job got going"
        time.sleep(0.05)


def test_two_celery_workers_run_each_job_once_even_when_one_is_killed(
    celery_settings: Settings, tmp_path: Path
) -> None:
    workers = start_workers(celery_settings, 2, tmp_path)
    try:
        with TestClient(create_app(celery_settings), raise_server_exceptions=False) as client:
            ready = client.get("/readyz").json()
            assert ready["checks"]["executor"] == {"type": "celery", "broker": "ok"}
            dataset = builtin(client, "iris")["id"]

            # Eight jobs at once, four per model name so that the two workers also race to
            # register versions of one model: each succeeds with exactly one version.
            burst = [submit(client, dataset, f"burst-{i % 2}", epochs=20) for i in range(8)]
            jobs = wait_all(client, burst, timeout=120)
            assert [job["status"] for job in jobs] == ["succeeded"] * 8, jobs
            for name in ("burst-0", "burst-1"):
                numbers = [
                    j["result"]["version"] for j in jobs if j["result"]["model_name"] == name
                ]
                assert sorted(numbers) == [1, 2, 3, 4]
            versions = versions_per_job(celery_settings)
            assert {job_id: versions.get(job_id) for job_id in burst} == dict.fromkeys(burst, 1)
            ran_on = {
                e["data"]["worker"]
                for job_id in burst
                for e in client.get(f"/v1/jobs/{job_id}/events").json()["data"]
                if e["message"] == "job running"
            }
            assert len({w.split(":")[1] for w in ran_on}) == 2  # both workers took jobs

            # SIGKILL one worker in the middle of a job.
            long = [submit(client, dataset, f"long-{i}", epochs=150) for i in range(3)]
            victim_job, victim_pid = running_worker_pid(client, long)
            victim_process = next(w for w in workers if w.pid == victim_pid)
            victim_process.send_signal(signal.SIGKILL)
            victim_process.wait()  # reaped, as its parent (init, Docker) would
            jobs = wait_all(client, long, timeout=180)
            versions = versions_per_job(celery_settings)
            for job in jobs:
                assert job["status"] in {"succeeded", "failed"}, job  # none lost
                if job["status"] == "succeeded":
                    assert versions.get(job["id"]) == 1, job  # none completed twice
                else:
                    assert job["error"]["code"] == "worker_lost", job
                    assert job["id"] not in versions
            victim = next(job for job in jobs if job["id"] == victim_job)
            # The survivor's sweep saw the dead process and ran the job again.
            assert victim["attempts"] == 2 and victim["status"] == "succeeded", victim
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
