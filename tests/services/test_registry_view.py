"""The registry view behind predictions: no database read per request in steady state, and
a version or alias committed by another process is served from that process's next request."""

import subprocess
import sys
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from app.db import changes
from app.services.registry import resolution

SETOSA = [5.1, 3.5, 1.4, 0.2]

# Runs in a separate interpreter: no in-process notice, only what crosses processes.
ANOTHER_PROCESS = """
import sys
from sqlalchemy import select
from sqlalchemy.orm import undefer
from app.db.models import ModelVersion
from app.db.session import Database
from app.services import registry

database = Database(sys.argv[1])
with database.session_scope() as session:
    if sys.argv[2] == "new-version":
        first = session.scalar(
            select(ModelVersion).options(undefer(ModelVersion.weights))
            .where(ModelVersion.model_name == "iris-source", ModelVersion.version == 1)
        )
        copied = {
            column: getattr(first, column)
            for column in ("kind", "strategy", "parent_name", "parent_version", "dataset_id",
                           "task", "signature", "architecture", "hyperparameters",
                           "preprocessing", "metrics", "size_bytes", "sha256")
        }
        registry.register_version(session, name="iris-source", weights=first.weights, **copied)
    else:
        registry.set_alias(session, "iris-source", "production", int(sys.argv[3]))
database.dispose()
"""


def in_another_process(url: str, *args: str) -> None:
    subprocess.run([sys.executable, "-c", ANOTHER_PROCESS, url, *args], check=True, timeout=120)


def served_version(client: TestClient, query: str = "") -> int:
    response = client.post(f"/v1/models/iris-source/predict{query}", json={"instances": [SETOSA]})
    assert response.status_code == 200, response.text
    return int(response.json()["model"]["version"])


@pytest.fixture
def lookups(trained_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Every database read the prediction path makes."""
    lookup = trained_client.app.state.predictions._lookup  # type: ignore[attr-defined]
    real = lookup.find
    seen: list[tuple[Any, ...]] = []

    def counted(*args: Any) -> Any:
        seen.append(args)
        return real(*args)

    monkeypatch.setattr(lookup, "find", counted)
    return seen


def test_steady_state_predictions_read_no_database(
    trained_client: TestClient, lookups: list[tuple[Any, ...]]
) -> None:
    for _ in range(5):
        assert served_version(trained_client) == 1
        assert served_version(trained_client, "?version=1") == 1
    # One read per distinct question, then none.
    assert len(lookups) == 2


def test_other_processes_changes_are_served_at_the_next_request(
    trained_client: TestClient, lookups: list[tuple[Any, ...]]
) -> None:
    url = trained_client.app.state.settings.resolved_database_url  # type: ignore[attr-defined]
    assert served_version(trained_client) == 1
    in_another_process(url, "new-version")
    # The latest version is the default, from the very next request.
    assert served_version(trained_client) == 2
    in_another_process(url, "alias", "1")
    assert served_version(trained_client) == 1
    assert served_version(trained_client, "?alias=production") == 1
    in_another_process(url, "alias", "2")
    assert served_version(trained_client, "?alias=production") == 2
    assert served_version(trained_client) == 2
    reads = len(lookups)
    for _ in range(5):
        served_version(trained_client, "?alias=production")
    assert len(lookups) == reads


def test_this_processs_alias_move_is_served_at_once(trained_client: TestClient) -> None:
    client = trained_client
    assert served_version(client, "?version=1") == 1
    assert client.put("/v1/models/iris-source/aliases/canary", json={"version": 1}).is_success
    assert served_version(client, "?alias=canary") == 1
    assert client.delete("/v1/models/iris-source/aliases/canary").status_code == 204
    gone = client.post("/v1/models/iris-source/predict?alias=canary", json={"instances": [SETOSA]})
    assert gone.status_code == 404
    assert gone.json()["code"] == "alias_not_found"


def test_a_rolled_back_change_is_not_announced(trained_client: TestClient) -> None:
    database = trained_client.app.state.database  # type: ignore[attr-defined]
    url = trained_client.app.state.settings.resolved_database_url  # type: ignore[attr-defined]
    (counter,) = changes.counter_paths(url, changes.REGISTRY)
    before = counter.read_bytes()
    with database.sessions() as session:
        session.execute(text("SELECT 1"))
        changes.mark(session, changes.REGISTRY)
        session.rollback()
        session.commit()
    assert counter.read_bytes() == before


def test_the_view_is_bounded(trained_client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(resolution, "MAX_REMEMBERED_RESOLUTIONS", 1)
    view = trained_client.app.state.predictions.registry_view  # type: ignore[attr-defined]
    served_version(trained_client)
    served_version(trained_client, "?version=1")
    assert len(view._answers) == 1
