"""Webhooks on job end: owed in the transaction that ends the job, signed, retried with
backoff, every attempt visible on the job, and no call to a private address by default."""

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.db.session import Database
from app.jobs import webhooks
from app.main import create_app
from app.services import webhook_outbox
from tests.helpers import FAST, assert_problem, builtin, run_pending_jobs

pytestmark = pytest.mark.postgres

SECRET = "whsec-test-0123456789"


class Receiver:
    """A local HTTP endpoint answering each POST with the next scripted status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooked(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "webhook_secret": SecretStr(SECRET),
            "webhook_allow_private": True,  # the receiver is on loopback
            "webhook_retry_seconds": 0.05,
            "webhook_max_attempts": 3,
        }
    )


@pytest.fixture
def hooked_client(hooked: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(hooked), raise_server_exceptions=False) as client:
        yield client


def submit(client: TestClient, url: str | None, **extra: Any) -> dict[str, Any]:
    dataset = builtin(client, "iris")
    body = {
        "dataset_id": dataset["id"],
        "target_column": "target",
        "model_name": "m",
        "hyperparameters": {**FAST, "epochs": 2},
        "webhook_url": url,
        "tags": {"run": "r1"},
        **extra,
    }
    response = client.post("/v1/jobs/source-training", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def deliver_until(database: Database, settings: Settings, done: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "webhook not delivered in time"
        webhooks.deliver_due(database, settings)
        time.sleep(0.05)


def test_a_finished_job_calls_its_webhook_signed(
    hooked_client: TestClient, hooked: Settings, database: Database
) -> None:
    receiver = Receiver([])
    try:
        job = submit(hooked_client, receiver.url)
        assert job["webhook_url"] == receiver.url
        run_pending_jobs(database)
        deliver_until(database, hooked, lambda: receiver.received)
        headers, body = receiver.received[0]
        timestamp = headers["Graft-Webhook-Timestamp"]
        expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
        assert headers["Graft-Signature"] == f"v1={expected.hexdigest()}"
        assert abs(int(timestamp) - time.time()) < 60
        payload = json.loads(body)
        assert payload["type"] == "job.succeeded"
        assert payload["job"]["id"] == job["id"] and payload["job"]["status"] == "succeeded"
        assert payload["job"]["result"] == {"model_name": "m", "version": 1}
        assert payload["job"]["tags"] == {"run": "r1"}
        shown = hooked_client.get(f"/v1/jobs/{job['id']}").json()
        (delivery,) = shown["webhook_deliveries"]
        assert delivery["status"] == "delivered" and delivery["attempts"] == 1
        assert delivery["attempt_log"][0]["status_code"] == 200
        # Delivered once: another pass sends nothing.
        webhooks.deliver_due(database, hooked)
        assert len(receiver.received) == 1
    finally:
        receiver.close()


def test_retries_with_backoff_then_gives_up(
    hooked_client: TestClient, hooked: Settings, database: Database
) -> None:
    receiver = Receiver([500, 503, 200])
    flaky = submit(hooked_client, receiver.url)
    dead = Receiver([500, 500, 500, 500])
    doomed = submit(hooked_client, dead.url)
    try:
        run_pending_jobs(database)

        def states() -> dict[str, Any]:
            return {
                job["id"]: hooked_client.get(f"/v1/jobs/{job['id']}").json()["webhook_deliveries"][
                    0
                ]
                for job in (flaky, doomed)
            }

        deliver_until(
            database,
            hooked,
            lambda: all(d["status"] in ("delivered", "failed") for d in states().values()),
        )
        final = states()
        assert final[flaky["id"]]["status"] == "delivered"
        assert [a["status_code"] for a in final[flaky["id"]]["attempt_log"]] == [500, 503, 200]
        assert final[doomed["id"]]["status"] == "failed" and final[doomed["id"]]["attempts"] == 3
        assert final[doomed["id"]]["last_error"] == "HTTP 500"
        assert len(dead.received) == 3
    finally:
        receiver.close()
        dead.close()


def test_a_cancelled_queued_job_owes_its_webhook(
    hooked_client: TestClient, hooked: Settings, database: Database
) -> None:
    receiver = Receiver([])
    try:
        job = submit(hooked_client, receiver.url)
        assert hooked_client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        deliver_until(database, hooked, lambda: receiver.received)
        assert json.loads(receiver.received[0][1])["type"] == "job.cancelled"
    finally:
        receiver.close()


def test_no_webhook_without_a_secret_or_to_a_private_address(
    client: TestClient, settings: Settings
) -> None:
    refused = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": builtin(client, "iris")["id"],
            "target_column": "target",
            "model_name": "m",
            "webhook_url": "https://hooks.example.com/x",
        },
    )
    assert_problem(refused, 422, "webhooks_not_configured")
    strict = settings.model_copy(update={"webhook_secret": SecretStr(SECRET)})
    with TestClient(create_app(strict), raise_server_exceptions=False) as guarded:
        dataset = builtin(guarded, "iris")
        for url in (
            "http://127.0.0.1:8000/x",
            "http://localhost/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://10.0.0.7/x",
            "ftp://hooks.example.com/x",
        ):
            response = guarded.post(
                "/v1/jobs/source-training",
                json={
                    "dataset_id": dataset["id"],
                    "target_column": "target",
                    "model_name": "m",
                    "webhook_url": url,
                },
            )
            assert_problem(response, 422, "webhook_url_refused")


def test_the_address_check_at_send_time() -> None:
    for url in ("http://127.0.0.1/x", "http://[::ffff:127.0.0.1]/x", "http://192.168.1.1/x"):
        with pytest.raises(webhook_outbox.UnsafeTarget):
            webhook_outbox.check_url(url, allow_private=False, resolve=True)
    with pytest.raises(webhook_outbox.UnsafeTarget, match="does not resolve"):
        webhook_outbox.check_url("http://no-such-host.invalid/x", allow_private=False, resolve=True)
    webhook_outbox.check_url("http://93.184.216.34/x", allow_private=False, resolve=True)
    webhook_outbox.check_url("http://127.0.0.1/x", allow_private=True, resolve=True)


def test_a_sweep_spends_at_most_its_budget(
    hooked_client: TestClient, hooked: Settings, database: Database
) -> None:
    receiver = Receiver([])
    try:
        job = submit(hooked_client, receiver.url)
        assert hooked_client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
        # No time left: nothing is claimed, the delivery waits for the next sweep.
        assert webhooks.deliver_due(database, hooked, budget_seconds=0) == 0
        shown = hooked_client.get(f"/v1/jobs/{job['id']}").json()
        assert shown["webhook_deliveries"][0]["status"] == "pending"
        assert webhooks.deliver_due(database, hooked) == 1
        assert len(receiver.received) == 1
    finally:
        receiver.close()
