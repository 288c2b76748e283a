"""The job tallies (kept by triggers) always equal a count of the jobs themselves."""

import random
import threading
from pathlib import Path

import pytest
from sqlalchemy import column, delete, func, insert, select, table, text, update

from app.db import migrate
from app.db.models import Job, JobTally
from app.db.session import Database, make_engine
from app.enums import ACTIVE_JOB_STATUSES, JobKind, JobStatus
from app.ids import new_id, utcnow
from tests.conftest import fresh_postgres_database

pytestmark = pytest.mark.postgres

KEYS = ["key_a", "key_b", None]


def tallies(database: Database) -> dict[str, int]:
    with database.read_scope() as session:
        rows = session.execute(
            select(JobTally.name, func.sum(JobTally.jobs)).group_by(JobTally.name)
        )
        return {name: int(total) for name, total in rows if total}


def counted(database: Database) -> dict[str, int]:
    with database.read_scope() as session:
        expected = {}
        queued = session.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED))
        if queued:
            expected["queued"] = int(queued)
        active = session.execute(
            select(Job.created_by, func.count())
            .where(Job.created_by.is_not(None), Job.status.in_(ACTIVE_JOB_STATUSES))
            .group_by(Job.created_by)
        )
        expected.update({f"active:{key}": int(n) for key, n in active})
        return expected


def job_row(status: str, created_by: str | None) -> dict[str, object]:
    return {
        "id": new_id("job"),
        "kind": JobKind.SOURCE_TRAINING,
        "status": status,
        "created_at": utcnow(),
        "request": {},
        "dataset_id": "ds_x",
        "model_name": "m",
        "progress": {},
        "created_by": created_by,
    }


def test_every_kind_of_change_keeps_the_tallies(database: Database) -> None:
    rng = random.Random(7)
    statuses = list(JobStatus)
    with database.session_scope() as session:
        session.execute(
            insert(Job), [job_row(rng.choice(statuses), rng.choice(KEYS)) for _ in range(60)]
        )
    assert tallies(database) == counted(database)
    with database.read_scope() as session:
        ids = list(session.scalars(select(Job.id)))
    for _ in range(40):
        chosen = rng.sample(ids, 5)
        with database.session_scope() as session:
            # One statement changing several rows, ORM objects, no-op updates, moves
            # between keys: each path the application (or an operator's SQL) may take.
            session.execute(
                update(Job).where(Job.id.in_(chosen[:3])).values(status=rng.choice(statuses))
            )
            row = session.get(Job, chosen[3])
            assert row is not None
            row.status = rng.choice(statuses)
            row.created_by = rng.choice(KEYS)
            session.execute(update(Job).where(Job.id == chosen[4]).values(status=Job.status))
    assert tallies(database) == counted(database)
    with database.session_scope() as session:
        session.execute(delete(Job).where(Job.id.in_(ids[:30])))
    assert tallies(database) == counted(database)
    with database.session_scope() as session:
        session.execute(delete(Job))
    assert tallies(database) == {}


def test_a_rolled_back_change_leaves_the_tallies(database: Database) -> None:
    with database.session_scope() as session:
        session.execute(insert(Job), [job_row(JobStatus.QUEUED, "key_a")])
    before = tallies(database)
    with pytest.raises(RuntimeError), database.session_scope() as session:
        session.execute(insert(Job), [job_row(JobStatus.QUEUED, "key_a") for _ in range(3)])
        raise RuntimeError("abandoned")
    assert tallies(database) == before == {"queued": 1, "active:key_a": 1}


def test_concurrent_submissions_and_claims_keep_the_tallies(database: Database) -> None:
    """Many connections at once (on PostgreSQL each writes its own slot of `queued`)."""
    barrier = threading.Barrier(6)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        own = Database(database.url)
        rng = random.Random(index)
        try:
            barrier.wait()
            for _ in range(25):
                with own.session_scope() as session:
                    session.execute(insert(Job), [job_row(JobStatus.QUEUED, rng.choice(KEYS))])
                with own.session_scope() as session:
                    claimed = session.scalar(
                        select(Job.id).where(Job.status == JobStatus.QUEUED).limit(1)
                    )
                    if claimed is not None:
                        session.execute(
                            update(Job)
                            .where(Job.id == claimed, Job.status == JobStatus.QUEUED)
                            .values(status=rng.choice([JobStatus.RUNNING, JobStatus.CANCELLED]))
                        )
        except BaseException as error:
            errors.append(error)
        finally:
            own.dispose()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert tallies(database) == counted(database)


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path):  # type: ignore[no-untyped-def]
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with fresh_postgres_database("tallies") as url:
        yield url


# Columns without a database default at that revision, which the ORM used to fill in.
THEN_DEFAULTS = {"cancel_requested": False, "attempts": 0, "next_event_seq": 1}


def test_the_migration_counts_the_jobs_already_there(empty_url: str) -> None:
    migrate.upgrade(empty_url, "e9f1a3b5c7d9")
    engine = make_engine(empty_url)
    rng = random.Random(3)
    rows = [
        {**job_row(rng.choice(list(JobStatus)), rng.choice(KEYS)), **THEN_DEFAULTS}
        for _ in range(50)
    ]
    # The jobs table as it was at that revision: only the columns these rows name.
    then = table("jobs", *(column(name) for name in rows[0]))
    with engine.begin() as conn:
        conn.execute(
            insert(then),
            [{**row, "request": "{}", "progress": "{}"} for row in rows],
        )
    engine.dispose()
    migrate.upgrade(empty_url)
    database = Database(empty_url)
    try:
        assert tallies(database) == counted(database)
        with database.session_scope() as session:
            session.execute(update(Job).values(status=JobStatus.QUEUED))
        assert tallies(database) == counted(database)
        assert tallies(database)["queued"] == 50
    finally:
        database.dispose()
    migrate.downgrade(empty_url, "e9f1a3b5c7d9")
    engine = make_engine(empty_url)
    with engine.begin() as conn:
        # The triggers went with the table: changing jobs works as before.
        conn.execute(text("UPDATE jobs SET status = 'failed'"))
    engine.dispose()
