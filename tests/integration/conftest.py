"""A real `graft serve` process per test, reached over HTTP keep-alive like any client.

The in-process TestClient runs a dependency's teardown before it hands back the response,
so it cannot see a write that is acknowledged before it commits; these tests can.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import fresh_postgres_database

# Sent on every request: harmless while auth is off, the admin key once it is on.
ADMIN_KEY = "graft-test-admin-key-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class LiveServer:
    """`python -m app.cli serve` on a free port, with its own data folder and database."""

    def __init__(
        self, data_dir: Path, database_url: str | None = None, **settings: str | int | float
    ) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        # These tests queue jobs in bulk with one key to race them: the per-key quota (tested
        # in tests/api/test_auth.py) would only get in their way.
        self.settings = {
            "workers": 0,
            "log_level": "warning",
            "max_active_jobs_per_key": 100_000,
            **settings,
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
        env.update({f"GRAFT_{k.upper()}": str(v) for k, v in self.settings.items()})
        env["GRAFT_DATA_DIR"] = str(self.data_dir)
        env["GRAFT_ADMIN_KEY"] = ADMIN_KEY
        if self.database_url is not None:
            env["GRAFT_DATABASE_URL"] = self.database_url
        return env

    def start(self, timeout: float = 90) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
                cwd=self.data_dir,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"graft serve exited {self.process.returncode}: {self.log()}")
            try:
                if httpx2.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx2.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"graft serve did not answer /healthz in {timeout} s: {self.log()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: the API and any workers, with no clean-up."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()

    def client(self, **options: object) -> httpx2.Client:
        """A keep-alive client (one pooled connection reused across requests)."""
        return httpx2.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
            timeout=60,
            **options,  # type: ignore[arg-type]
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:] if self.log_path.exists() else ""


@pytest.fixture
def live_server(tmp_path: Path, db_backend: str) -> Iterator[LiveServer]:
    """A running server on SQLite, or (for tests marked postgres) on a fresh PostgreSQL DB."""
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    if db_backend == "postgresql":
        with fresh_postgres_database("live") as url:
            server = LiveServer(data_dir, url)
            server.start()
            try:
                yield server
            finally:
                server.stop()
        return
    server = LiveServer(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


# --- Helpers for tests that need more than one server on the same data, or trained versions.

FINAL_JOB_STATUSES = frozenset({"succeeded", "failed", "cancelled"})
IRIS_INSTANCE = [5.1, 3.5, 1.4, 0.2]
TINY_MLP = {"type": "mlp", "hidden_layers": [8]}
TINY_TRAINING = {"epochs": 3, "learning_rate": 0.02, "batch_size": 16, "seed": 0}


class ServerFactory:
    """LiveServers that share one data folder and one database (SQLite or PostgreSQL);
    start them one after the other (e.g. a worker-backed one to train, then a queued-only
    one). Every server made here is stopped at the end of the test."""

    def __init__(self, data_dir: Path, database_url: str | None) -> None:
        self.data_dir = data_dir
        self.database_url = database_url
        self.servers: list[LiveServer] = []

    def __call__(self, *, start: bool = True, **settings: str | int | float) -> LiveServer:
        server = LiveServer(self.data_dir, self.database_url, **settings)
        self.servers.append(server)
        if start:
            server.start()
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def server_factory(tmp_path: Path, db_backend: str) -> Iterator[ServerFactory]:
    """Like `live_server`, but starts nothing itself: the test makes the servers it needs."""
    data_dir = tmp_path / "live"
    data_dir.mkdir()
    if db_backend == "postgresql":
        with fresh_postgres_database("live") as url:
            factory = ServerFactory(data_dir, url)
            try:
                yield factory
            finally:
                factory.stop_all()
        return
    factory = ServerFactory(data_dir, None)
    try:
        yield factory
    finally:
        factory.stop_all()


def wait_for_jobs(
    client: httpx2.Client, job_ids: list[str], timeout: float = 180
) -> dict[str, dict[str, object]]:
    """Poll until every job is final; returns each job's last body."""
    deadline = time.monotonic() + timeout
    done: dict[str, dict[str, object]] = {}
    while len(done) < len(job_ids):
        for job_id in job_ids:
            if job_id in done:
                continue
            response = client.get(f"/v1/jobs/{job_id}")
            assert response.status_code == 200, response.text
            body = response.json()
            if body["status"] in FINAL_JOB_STATUSES:
                done[job_id] = body
        if len(done) < len(job_ids):
            if time.monotonic() > deadline:
                pending = [j for j in job_ids if j not in done]
                raise AssertionError(f"jobs not finished after {timeout} s: {pending}")
            time.sleep(0.1)
    return done


def train_tiny_versions(
    client: httpx2.Client, versions_per_model: dict[str, int], dataset_id: str | None = None
) -> str:
    """Train `n` tiny source versions into each named model (needs a server with workers)
    and wait until all of them succeeded; returns the iris dataset they trained on."""
    if dataset_id is None:
        created = client.post(
            "/v1/datasets/builtin", json={"name": "iris", "start": 0, "stop": 100}
        )
        assert created.status_code == 201, created.text
        dataset_id = created.json()["id"]
    job_ids = []
    for model_name, count in versions_per_model.items():
        for _ in range(count):
            response = client.post(
                "/v1/jobs/source-training",
                json={
                    "dataset_id": dataset_id,
                    "target_column": "target",
                    "model_name": model_name,
                    "architecture": TINY_MLP,
                    "hyperparameters": TINY_TRAINING,
                },
            )
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
    finished = wait_for_jobs(client, job_ids)
    failed = {
        j: (b["status"], b["error"]) for j, b in finished.items() if b["status"] != "succeeded"
    }
    assert not failed, (
        f"{len(failed)} of {len(job_ids)} training jobs did not succeed: "
        + str(next(iter(failed.items())))[:1500]
    )
    for model_name, count in versions_per_model.items():
        model = client.get(f"/v1/models/{model_name}")
        assert model.status_code == 200, model.text
        assert model.json()["latest_version"] == count, model.json()
    return dataset_id
