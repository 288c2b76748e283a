"""Shared pieces of the benchmarks: a real `graft serve` process, Celery workers, HTTP.

Benchmarks measure the service as deployed: separate processes talking HTTP and SQL,
never the app imported into the benchmark's own process.
"""

import contextlib
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

TERMINAL = {"succeeded", "failed", "cancelled"}
# The admin key the benchmarks' servers start with (GRAFT_ADMIN_KEY); every request sends it.
BENCH_ADMIN_KEY = "graft-benchmark-admin-key-not-a-secret"


class Api:
    """A keep-alive HTTP/1.1 client for one server (stdlib only)."""

    def __init__(self, port: int, key: str | None = None) -> None:
        self.port = port
        self.key = key or BENCH_ADMIN_KEY
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.key}"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        try:
            self._conn.request(method, path, body=payload, headers=headers)
            response = self._conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            self._conn.close()
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self._conn.request(method, path, body=payload, headers=headers)
            response = self._conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data = self.call(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path} -> {status}: {data}")
        return data

    def dataset(self, name: str = "iris") -> str:
        dataset_id: str = self.ok("POST", "/v1/datasets/builtin", {"name": name})["id"]
        return dataset_id

    def submit(self, dataset_id: str, model_name: str, **hyperparameters: Any) -> str:
        body = {
            "dataset_id": dataset_id,
            "target_column": "target",
            "model_name": model_name,
            "architecture": {"hidden_layers": [16, 16]},
            "hyperparameters": {"learning_rate": 0.02, "batch_size": 16, **hyperparameters},
        }
        job_id: str = self.ok("POST", "/v1/jobs/source-training", body)["id"]
        return job_id

    def wait(self, job_id: str, statuses: set[str], timeout: float = 600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job: dict[str, Any] = self.ok("GET", f"/v1/jobs/{job_id}")
            if job["status"] in statuses:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']}")
            time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def timestamp(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), linear between closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary_ms(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"n={len(ms)}  median {statistics.median(ms):7.1f} ms  p95 {percentile(ms, 95):7.1f} ms  "
        f"max {max(ms):7.1f} ms"
    )


@contextlib.contextmanager
def temporary_postgres(server_url: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database on `server_url`, dropped afterwards (None: no server)."""
    if not server_url:
        yield None
        return
    from sqlalchemy import create_engine, make_url, text

    name = f"graft_bench_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _stop(process: subprocess.Popen[bytes], grace: float = 30) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def service(
    *,
    workers: int = 1,
    executor: str = "local",
    celery_workers: int = 0,
    database_url: str | None = None,
    broker_url: str | None = None,
    extra_env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> Iterator[Api]:
    """`graft serve` (plus Celery workers) on a free port, ready; stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="graft-bench-") as tmp:
        logs = log_dir or Path(tmp)
        port = free_port()
        env = {
            **os.environ,
            "GRAFT_DATA_DIR": str(Path(tmp) / "data"),
            "GRAFT_PORT": str(port),
            "GRAFT_WORKERS": str(workers if executor == "local" else 0),
            "GRAFT_EXECUTOR": executor,
            "GRAFT_LOG_LEVEL": "warning",
            "GRAFT_ADMIN_KEY": BENCH_ADMIN_KEY,
            **(extra_env or {}),
        }
        if database_url:
            env["GRAFT_DATABASE_URL"] = database_url
        if executor == "celery":
            if not broker_url:
                raise SystemExit("the Celery executor needs --broker-url")
            env["GRAFT_BROKER_URL"] = broker_url
            env["GRAFT_CELERY_QUEUE"] = f"graft-bench-{os.getpid()}-{secrets.token_hex(3)}"
        processes: list[subprocess.Popen[bytes]] = []
        try:
            server_log = (logs / "server.log").open("wb")
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app.cli", "serve"],
                    env=env,
                    stdout=server_log,
                    stderr=subprocess.STDOUT,
                )
            )
            api = Api(port)
            _wait_ready(api, processes[0], logs / "server.log")
            for index in range(celery_workers):
                log = (logs / f"celery-worker-{index}.log").open("wb")
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "app.cli", "worker", "--executor", "celery"],
                        env={**env, "GRAFT_LOG_LEVEL": "info"},
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            for index in range(celery_workers):
                _wait_for_line(logs / f"celery-worker-{index}.log", "ready.", processes[1 + index])
            yield api
        finally:
            for process in reversed(processes):
                _stop(process)
            if executor == "celery" and broker_url and broker_url.startswith("redis"):
                _forget_redis_keys(broker_url, env["GRAFT_CELERY_QUEUE"])


def _wait_ready(api: Api, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"graft serve exited; see its log:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            status, _ = api.call("GET", "/readyz")
            if status == 200:
                return
        time.sleep(0.2)
    raise SystemExit("graft serve did not become ready in 180 s")


def _wait_for_line(log: Path, needle: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"a Celery worker exited; see {log}:\n{log.read_text()[-3000:]}")
        if needle in log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise SystemExit(f"a Celery worker did not start in 180 s; see {log}")


def _forget_redis_keys(broker_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(broker_url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)
    client.close()


def warm_up(api: Api, dataset_id: str, workers: int) -> None:
    """One finished job per worker, so that no measurement pays a process's first job."""
    ids = [api.submit(dataset_id, "warm-up", epochs=1) for _ in range(max(1, workers))]
    for job_id in ids:
        api.wait(job_id, TERMINAL)
