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


def register(session: Session, name: str) -> Any:
    return registry.register_version(
        session,
        name=name,
        weights=WEIGHTS,
        job_id=None,
        dataset_id="ds_x",
        kind="source",
        task="classification",
        signature={},
        architecture={},
        hyperparameters={},
        preprocessing={},
        metrics={},
        size_bytes=len(WEIGHTS),
        sha256="0" * 64,
    )


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
