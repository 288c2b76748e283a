"""Every list route reads its page off an index: no full scan, no sort of the whole table.

Each list request runs through the real app while every statement it sends is recorded; each
statement is then explained with its own parameters. On SQLite, `EXPLAIN QUERY PLAN` must
show no plain `SCAN <table>` (a walk `USING INDEX` in the page's order is what a keyset page
is) and no `TEMP B-TREE`. On PostgreSQL, whose planner prefers sequential scans of tiny tables,
sequential scans and sorts are priced out first (`enable_seqscan`, `enable_sort` off), so a
`Seq Scan` or `Sort` that is still chosen means there is no index to do without it.
"""

import re
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from sqlalchemy import event

from app.db.session import Database
from app.ml import serialization
from app.services import registry
from tests.helpers import builtin

pytestmark = pytest.mark.postgres

MODELS = 4
VERSIONS = 6


WEIGHTS = serialization.weights_to_bytes(torch.nn.Linear(2, 2))


def register(database: Database, name: str, versions: int) -> None:
    for _ in range(versions):
        with database.session_scope() as session:
            registry.register_version(
                session,
                name=name,
                weights=WEIGHTS,
                kind="source",
                strategy=None,
                parent_name=None,
                parent_version=None,
                dataset_id="ds_none",
                task="classification",
                signature={"inputs": [], "target": "y", "classes": ["a", "b"]},
                architecture={},
                hyperparameters={},
                preprocessing={},
                metrics={},
                size_bytes=16,
                sha256="0" * 64,
                job_id=None,
            )


@pytest.fixture
def populated(client: TestClient, database: Database) -> dict[str, Any]:
    dataset = builtin(client, "iris", start=0, stop=100)
    builtin(client, "iris", start=100, stop=150)
    jobs = []
    for index in range(3):
        response = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": dataset["id"],
                "target_column": "target",
                "model_name": f"planned-{index}",
                "hyperparameters": {"epochs": 1},
            },
        )
        assert response.status_code == 202, response.text
        jobs.append(response.json()["id"])
    assert client.post(f"/v1/jobs/{jobs[0]}/cancel").status_code == 202
    for index in range(MODELS):
        register(database, f"model-{index}", VERSIONS)
    assert client.put("/v1/models/model-0/aliases/production", json={"version": 2}).is_success
    for index in range(3):
        created = client.post("/v1/keys", json={"name": f"k{index}", "scopes": ["read"]})
        assert created.status_code == 201, created.text
    return {"jobs": jobs, "dataset": dataset["id"]}


@pytest.fixture
def recorded(client: TestClient) -> Iterator[list[tuple[str, Any]]]:
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    statements: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    yield statements
    event.remove(engine, "before_cursor_execute", record)


def explain(engine: Any, statement: str, parameters: Any) -> list[str]:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        if engine.dialect.name == "sqlite":
            cursor.execute("EXPLAIN QUERY PLAN " + statement, parameters)
            return [str(row[-1]) for row in cursor.fetchall()]
        cursor.execute("SET enable_seqscan = off")
        cursor.execute("SET enable_sort = off")
        cursor.execute("EXPLAIN " + statement, parameters)
        lines = [str(row[0]) for row in cursor.fetchall()]
        raw.rollback()
        return lines
    finally:
        raw.close()


def problems(engine: Any, plan: list[str]) -> list[str]:
    if engine.dialect.name == "sqlite":
        return [
            line
            for line in plan
            if re.fullmatch(r"SCAN \w+", line.strip()) or "TEMP B-TREE" in line
        ]
    return [line for line in plan if "Seq Scan" in line or re.search(r"\bSort\b", line)]


LISTS = [
    "/v1/models?limit=2",
    "/v1/models/model-0",
    "/v1/models/model-0/versions?limit=3",
    "/v1/datasets?limit=1",
    "/v1/jobs?limit=2",
    "/v1/jobs?status=queued&limit=1",
    "/v1/jobs?kind=source_training&limit=1",
    "/v1/jobs?status=queued&kind=source_training&limit=1",
    "/v1/keys?limit=2",
    "/v1/keys?include_revoked=true&limit=2",
]


@pytest.mark.parametrize("url", LISTS)
def test_each_list_page_comes_off_an_index(
    client: TestClient,
    populated: dict[str, Any],
    recorded: list[tuple[str, Any]],
    url: str,
) -> None:
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    first = client.get(url)
    assert first.status_code == 200, first.text
    body = first.json()
    # The second page too: its cursor adds the keyset condition.
    if body.get("has_more"):
        last = body["data"][-1]
        cursor = last["version"] if "/versions" in url else last.get("id") or last["name"]
        joiner = "&" if "?" in url else "?"
        following = client.get(f"{url}{joiner}after={cursor}")
        assert following.status_code == 200, following.text
    assert recorded, "no statement recorded"
    for statement, parameters in recorded:
        plan = explain(engine, statement, parameters)
        assert not problems(engine, plan), f"{url}: {statement}\n" + "\n".join(plan)


def test_job_events_page_comes_off_an_index(
    client: TestClient, populated: dict[str, Any], recorded: list[tuple[str, Any]]
) -> None:
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    job = populated["jobs"][0]
    assert client.get(f"/v1/jobs/{job}/events?limit=1").status_code == 200
    assert client.get(f"/v1/jobs/{job}/events?after=1&limit=1").status_code == 200
    for statement, parameters in recorded:
        plan = explain(engine, statement, parameters)
        assert not problems(engine, plan), f"{statement}\n" + "\n".join(plan)


def test_pages_neither_skip_nor_repeat_while_rows_arrive(
    client: TestClient, database: Database
) -> None:
    """Walk the versions and models lists a page at a time while new rows are added between
    pages: every row that existed at the start is seen exactly once."""
    register(database, "walked", 30)
    for index in range(12):
        register(database, f"walk-{index:02d}", 1)
    seen_versions: list[int] = []
    seen_models: list[str] = []
    versions_url, models_url = "/v1/models/walked/versions?limit=4", "/v1/models?limit=5"
    added = 0
    while versions_url or models_url:
        if versions_url:
            page = client.get(versions_url).json()
            seen_versions += [item["version"] for item in page["data"]]
            versions_url = (
                f"/v1/models/walked/versions?limit=4&after={page['data'][-1]['version']}"
                if page["has_more"]
                else ""
            )
        if models_url:
            page = client.get(models_url).json()
            seen_models += [item["name"] for item in page["data"]]
            models_url = (
                f"/v1/models?limit=5&after={page['data'][-1]['name']}" if page["has_more"] else ""
            )
        # Newer rows arrive between pages; a newest-first keyset walk never meets them.
        register(database, "walked", 1)
        register(database, f"late-{added:02d}", 1)
        added += 1
    assert seen_versions == list(range(30, 0, -1))
    expected = {f"walk-{index:02d}" for index in range(12)} | {"walked"}
    assert sorted(seen_models) == sorted(expected)


def test_the_check_catches_a_scan_and_a_sort(client: TestClient) -> None:
    """The same check on a query no index serves (ordered by an unindexed column)."""
    engine = client.app.state.database.engine  # type: ignore[attr-defined]
    plan = explain(engine, "SELECT id FROM jobs ORDER BY started_at DESC LIMIT 5", ())
    assert problems(engine, plan), plan
