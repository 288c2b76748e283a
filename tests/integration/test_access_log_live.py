"""The access log of a real `graft serve`: one JSON line per request, with the key's id and
the model version that answered, and never the key's secret."""

import json
import time
from typing import Any

import httpx2
import pytest

from tests.integration.conftest import (
    ADMIN_KEY,
    IRIS_INSTANCE,
    LiveServer,
    ServerFactory,
    train_tiny_versions,
)

pytestmark = pytest.mark.slow


def access_lines(server: LiveServer) -> list[dict[str, Any]]:
    lines = []
    for text in server.log_path.read_text(errors="replace").splitlines():
        if text.startswith("{"):
            lines.append(json.loads(text))
    return lines


def line_for(server: LiveServer, request_id: str, timeout: float = 10) -> dict[str, Any]:
    """The line of one request; the writer thread writes it shortly after the response."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in access_lines(server):
            if line["request_id"] == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no access log line for {request_id}: {server.log()}")


def test_each_request_is_one_json_line_naming_key_route_and_version(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(workers=1)
    admin = server.client()
    train_tiny_versions(admin, {"iris-log": 2})
    created = admin.post("/v1/keys", json={"name": "app", "scopes": ["predict"]}).json()
    secret = created["secret"]
    with httpx2.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    ) as app:
        answered = app.post(
            "/v1/models/iris-log/predict",
            json={"instances": [IRIS_INSTANCE]},
            headers={"X-Request-ID": "checkout-1234"},
        )
        assert answered.status_code == 200, answered.text
        assert answered.headers["x-request-id"] == "checkout-1234"
        pinned = app.post(
            "/v1/models/iris-log/predict?version=1", json={"instances": [IRIS_INSTANCE]}
        )
        assert pinned.status_code == 200, pinned.text
    refused = httpx2.post(f"{server.url}/v1/models/iris-log/predict", json={"instances": []})
    assert refused.status_code == 401

    line = line_for(server, "checkout-1234")
    assert line["method"] == "POST"
    assert line["route"] == "/v1/models/{name}/predict"
    assert line["path"] == "/v1/models/iris-log/predict"
    assert line["status"] == 200
    assert line["key_id"] == created["id"]
    assert (line["model"], line["version"]) == ("iris-log", 2)
    assert 0 < line["latency_ms"] < 60_000 and line["client"] == "127.0.0.1"
    assert line_for(server, pinned.headers["x-request-id"])["version"] == 1
    anonymous = line_for(server, refused.headers["x-request-id"])
    assert (anonymous["status"], anonymous["key_id"]) == (401, None)
    assert "model" not in anonymous

    log = server.log_path.read_text(errors="replace")
    assert secret not in log and ADMIN_KEY not in log


def test_the_access_log_can_be_switched_off(server_factory: ServerFactory) -> None:
    server = server_factory(access_log="false")
    with server.client() as admin:
        response = admin.get("/v1/models")
        assert response.status_code == 200 and "x-request-id" not in response.headers
    assert access_lines(server) == []
