import threading
import time
from typing import Any

import pytest
from sqlalchemy.orm import Session
from torch import nn

from app.db.session import Database
from app.ml import serialization
from app.services import registry

WEIGHTS = serialization.weights_to_bytes(nn.Linear(2, 1))

# The race only exists where writers run concurrently: PostgreSQL.
pytestmark = pytest.mark.postgres


FIELDS: dict[str, Any] = {
    "job_id": None,
    "dataset_id": "ds_x",
    "kind": "source",
    "task": "classification",
    "signature": {},
    "architecture": {},
    "hyperparameters": {},
    "preprocessing": {},
    "metrics": {},
    "size_bytes": len(WEIGHTS),
    "sha256": "0" * 64,
}


def register(session: Session, name: str) -> Any:
    return registry.register_version(session, name=name, weights=WEIGHTS, **FIELDS)


def test_two_jobs_registering_a_new_name_at_once_get_versions_1_and_2(
    database: Database,
) -> None:
    first_written, release = threading.Event(), threading.Event()
    numbers: dict[str, int] = {}

    def first() -> None:
        with database.session_scope() as session:
            numbers["first"] = register(session, "raced").version
            first_written.set()
            release.wait(10)  # commit only once the second job is waiting on this one

    def second() -> None:
        own = Database(database.url)
        with own.session_scope() as session:
            numbers["second"] = register(session, "raced").version
        own.dispose()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert first_written.wait(10)
    threads[1].start()
    time.sleep(0.3)
    release.set()
    for thread in threads:
        thread.join(30)
    assert numbers == {"first": 1, "second": 2}


def test_bulk_registration_numbers_after_the_last_and_keeps_each_lineage(
    database: Database,
) -> None:
    with database.session_scope() as session:
        register(session, "bulk")
    with database.session_scope() as session:
        numbers = registry.register_versions(
            session, name="bulk", weights=WEIGHTS, count=5, **FIELDS
        )
    assert list(numbers) == [2, 3, 4, 5, 6]
    with database.session_scope() as session:
        assert register(session, "bulk").version == 7
    with database.read_scope() as session:
        rows, _ = registry.list_versions(session, "bulk", limit=10, after=None)
        assert [row.version for row in rows] == [7, 6, 5, 4, 3, 2, 1]
        assert [row.lineage[0]["version"] for row in rows] == [7, 6, 5, 4, 3, 2, 1]
        assert len({row.id for row in rows}) == 7
        assert registry.latest_version(session, "bulk") == 7
