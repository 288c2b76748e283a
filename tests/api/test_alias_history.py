"""Alias history and rollback: every move is kept with who made it, and a rollback puts
the alias back where its last change took it from."""

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from tests.helpers import assert_problem, builtin, train_source

pytestmark = pytest.mark.postgres

ADMIN = "graft-test-admin-key-for-alias-history"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def keyed(settings: Settings) -> Iterator[TestClient]:
    enabled = settings.model_copy(update={"auth": "enabled", "admin_key": SecretStr(ADMIN)})
    with TestClient(create_app(enabled), raise_server_exceptions=False, headers=AUTH) as client:
        yield client


@pytest.fixture
def three_versions(keyed: TestClient, database: Database) -> TestClient:
    dataset = builtin(keyed, "iris")
    for _ in range(3):
        train_source(keyed, database, dataset["id"], "m")
    return keyed


def history(client: TestClient, alias: str = "production", **params: int) -> list[Any]:
    response = client.get(f"/v1/models/m/aliases/{alias}/history", params=params)
    assert response.status_code == 200, response.text
    data: list[Any] = response.json()["data"]
    return data


def moves(client: TestClient) -> list[tuple[str, int | None, int | None]]:
    return [(c["action"], c["previous_version"], c["version"]) for c in history(client)]


def test_each_move_is_recorded_with_its_key(three_versions: TestClient) -> None:
    client = three_versions
    assert (
        client.put("/v1/models/m/aliases/production", json={"version": 1}).json()[
            "previous_version"
        ]
        is None
    )
    moved = client.put("/v1/models/m/aliases/production", json={"version": 3})
    assert moved.json() == {"name": "m", "alias": "production", "version": 3, "previous_version": 1}
    # Pointing it where it already points is not a move.
    client.put("/v1/models/m/aliases/production", json={"version": 3})
    assert moves(client) == [("set", 1, 3), ("set", None, 1)]
    newest = history(client)[0]
    assert newest["changed_by"] == "key_env_admin" and newest["name"] == "m"
    assert newest["changed_at"].endswith("Z") or "+00:00" in newest["changed_at"]
    # Other aliases have their own history.
    client.put("/v1/models/m/aliases/staging", json={"version": 2})
    assert [c["alias"] for c in history(client, "staging")] == ["staging"]


def test_rollback_goes_back_then_forward(three_versions: TestClient) -> None:
    client = three_versions
    client.put("/v1/models/m/aliases/production", json={"version": 1})
    client.put("/v1/models/m/aliases/production", json={"version": 2})
    rolled = client.post("/v1/models/m/aliases/production/rollback")
    assert rolled.status_code == 200, rolled.text
    assert rolled.json() == {
        "name": "m",
        "alias": "production",
        "version": 1,
        "previous_version": 2,
    }
    assert client.get("/v1/models/m").json()["aliases"] == {"production": 1}
    # Predictions follow at once.
    predicted = client.post(
        "/v1/models/m/predict?alias=production", json={"instances": [[5.1, 3.5, 1.4, 0.2]]}
    )
    assert predicted.json()["model"]["version"] == 1
    again = client.post("/v1/models/m/aliases/production/rollback")
    assert again.json()["version"] == 2
    assert moves(client) == [
        ("rollback", 1, 2),
        ("rollback", 2, 1),
        ("set", 1, 2),
        ("set", None, 1),
    ]


def test_rollback_refusals(three_versions: TestClient) -> None:
    client = three_versions
    assert_problem(client.post("/v1/models/m/aliases/production/rollback"), 404, "alias_not_found")
    assert_problem(
        client.post("/v1/models/nope/aliases/production/rollback"), 404, "model_not_found"
    )
    client.put("/v1/models/m/aliases/production", json={"version": 1})
    never_moved = assert_problem(
        client.post("/v1/models/m/aliases/production/rollback"), 409, "no_previous_version"
    )
    assert "version 1" in never_moved["detail"]
    client.put("/v1/models/m/aliases/production", json={"version": 2})
    assert client.delete("/v1/models/m/versions/1").status_code == 204
    gone = assert_problem(
        client.post("/v1/models/m/aliases/production/rollback"), 409, "previous_version_deleted"
    )
    assert "version 1" in gone["detail"]
    assert client.get("/v1/models/m").json()["aliases"] == {"production": 2}


def test_history_outlives_the_alias_and_pages(three_versions: TestClient) -> None:
    client = three_versions
    for version in (1, 2, 3, 1, 2):
        client.put("/v1/models/m/aliases/production", json={"version": version})
    assert client.delete("/v1/models/m/aliases/production").status_code == 204
    everything = history(client)
    assert [c["action"] for c in everything][:2] == ["delete", "set"]
    assert everything[0]["version"] is None and everything[0]["previous_version"] == 2
    first = client.get("/v1/models/m/aliases/production/history", params={"limit": 4}).json()
    assert first["has_more"] is True
    rest = history(client, after=first["data"][-1]["id"])
    assert [c["id"] for c in first["data"] + rest] == [c["id"] for c in everything]
    assert_problem(client.get("/v1/models/nope/aliases/x/history"), 404, "model_not_found")
    # Deleting the model takes its history with it.
    client.delete("/v1/models/m/versions/1")
    assert client.delete("/v1/models/m").status_code == 204
    assert_problem(client.get("/v1/models/m/aliases/production/history"), 404, "model_not_found")


def test_rolling_back_needs_the_train_scope(keyed: TestClient) -> None:
    reader = keyed.post("/v1/keys", json={"name": "r", "scopes": ["read"]}).json()["secret"]
    refused = keyed.post(
        "/v1/models/m/aliases/production/rollback",
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert_problem(refused, 403, "insufficient_scope")
