"""A real `graft serve` with a worker calls a job's webhook when the job ends."""

import hashlib
import hmac
import json
import time

from tests.integration.conftest import TINY_MLP, TINY_TRAINING, ServerFactory
from tests.jobs.test_webhooks import SECRET, Receiver


def test_the_worker_calls_the_webhook_when_the_job_ends(server_factory: ServerFactory) -> None:
    receiver = Receiver([])
    server = server_factory(
        workers=1, webhook_secret=SECRET, webhook_allow_private="true", sweep_seconds=0.5
    )
    try:
        with server.client() as client:
            dataset = client.post("/v1/datasets/builtin", json={"name": "iris"}).json()
            job = client.post(
                "/v1/jobs/source-training",
                json={
                    "dataset_id": dataset["id"],
                    "target_column": "target",
                    "model_name": "hooked",
                    "architecture": TINY_MLP,
                    "hyperparameters": TINY_TRAINING,
                    "webhook_url": receiver.url,
                },
            ).json()
            deadline = time.monotonic() + 120
            while not receiver.received:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            headers, body = receiver.received[0]
            signed = f"{headers['Graft-Webhook-Timestamp']}.".encode() + body
            digest = hmac.new(SECRET.encode(), signed, hashlib.sha256).hexdigest()
            assert headers["Graft-Signature"] == f"v1={digest}"
            assert json.loads(body)["job"]["id"] == job["id"]
            # The worker records the answer just after the receiver has it.
            while True:
                shown = client.get(f"/v1/jobs/{job['id']}").json()
                if shown["webhook_deliveries"][0]["status"] == "delivered":
                    break
                assert time.monotonic() < deadline, shown
                time.sleep(0.05)
            assert shown["status"] == "succeeded"
            assert shown["webhook_deliveries"][0]["attempt_log"][0]["status_code"] == 200
    finally:
        receiver.close()
