"""A group of submissions written together (`jobs.queue_group`, the group commit's writer)
ends exactly as the same submissions queued one after the other (`jobs.queue`): the same
jobs created, the same replays, the same refusals, the same tallies."""

from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from app.db.models import ApiKey, Dataset, Job, JobEvent
from app.db.session import Database
from app.enums import JobKind
from app.errors import AppError
from app.ids import utcnow
from app.services import jobs, registry
from app.services.job_drafts import JobDraft
from tests.jobs.test_job_tallies import counted, tallies
from tests.services.test_registry import FIELDS, WEIGHTS

pytestmark = pytest.mark.postgres

A = jobs.Caller("key_a", max_active_jobs=3, max_queued_jobs=9)
B = jobs.Caller("key_b", max_active_jobs=20, max_queued_jobs=9)
NOBODY = jobs.Caller(None, max_active_jobs=20, max_queued_jobs=9)


def draft(name: str, dataset: str = "ds_here", **fields: Any) -> JobDraft:
    return JobDraft(
        kind=JobKind.SOURCE_TRAINING,
        body={"dataset_id": dataset, "model_name": name},
        dataset_id=dataset,
        model_name=name,
        **fields,
    )


def fine_tune(name: str, version: int, source: str | None = None) -> JobDraft:
    return JobDraft(
        kind=JobKind.FINE_TUNING,
        body={"base": ["base", version], "model_name": name},
        dataset_id="ds_here",
        model_name=name,
        base_model_name="base",
        base_model_version=version,
        source_dataset_id=source,
    )


# Every path of `queue`, in an order where earlier submissions change later outcomes.
SUBMISSIONS = [
    jobs.Submission(draft("a1"), None, A),
    jobs.Submission(draft("k1"), "k1", B),
    jobs.Submission(draft("k1"), "k1", B),  # replays the job made just before
    jobs.Submission(draft("k1-other"), "k1", B),  # same key, another request: 422
    jobs.Submission(draft("k1"), "k1", A),  # another caller's key: 422
    jobs.Submission(draft("old"), "made-before", B),  # replays a committed job
    jobs.Submission(draft("gone", dataset="ds_gone"), None, A),  # 404
    jobs.Submission(fine_tune("ft", 1), None, A),
    jobs.Submission(fine_tune("ft-missing", 9), None, B),  # 404 version
    jobs.Submission(fine_tune("joint", 1, source="ds_gone"), None, B),  # 409 source gone
    jobs.Submission(draft("a3"), None, A),
    jobs.Submission(draft("a4"), None, A),  # key_a's fourth active job: 429
    jobs.Submission(draft("n1"), None, NOBODY),
    jobs.Submission(draft("n2"), None, NOBODY),
    jobs.Submission(draft("n3"), None, NOBODY),
    jobs.Submission(draft("n4"), None, NOBODY),  # the ninth queued job: the queue is full
    jobs.Submission(draft("b-late"), None, B),  # 429
]


@pytest.fixture
def prepared(database: Database) -> Database:
    now = utcnow()
    with database.session_scope() as session:
        for key in ("key_a", "key_b"):
            session.add(
                ApiKey(
                    id=key,
                    name=key,
                    scopes=["train"],
                    secret_hash=key * 4,
                    prefix="graft_",
                    created_at=now,
                )
            )
        session.execute(
            insert(Dataset),
            {
                "id": "ds_here",
                "name": "here",
                "format": "csv",
                "rows": 10,
                "columns": [],
                "size_bytes": 1,
                "sha256": "0" * 64,
                "origin": {},
                "created_at": now,
                "tags": {},
            },
        )
        registry.register_version(session, name="base", weights=WEIGHTS, **FIELDS)
        jobs.queue(session, draft("old"), "made-before", B)
    return database


def outcome(result: tuple[Job, bool] | Exception, made: dict[str, int]) -> Any:
    """What a caller sees, with job ids replaced by the order of their creation."""
    if isinstance(result, AppError):
        return (type(result).__name__, result.code)
    assert not isinstance(result, Exception), result
    job, created = result
    if created:
        made[job.id] = len(made)
    return ("created" if created else "replayed", made.get(job.id, "earlier"), job.model_name)


def run(database: Database, group: bool) -> tuple[list[Any], dict[str, int], int]:
    with database.sessions() as session:
        if group:
            results = jobs.queue_group(session, SUBMISSIONS)
        else:
            results = []
            for submission in SUBMISSIONS:
                try:
                    results.append(
                        jobs.queue(
                            session, submission.draft, submission.idempotency_key, submission.caller
                        )
                    )
                except AppError as refused:
                    results.append(refused)
        made: dict[str, int] = {}
        seen = [outcome(result, made) for result in results]
        events = count(session, JobEvent)
        session.commit()
    return seen, tallies(database), events


def count(session: Session, model: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(model)) or 0)


def test_a_group_ends_as_the_same_submissions_one_after_the_other(prepared: Database) -> None:
    with prepared.read_scope() as session:
        before = count(session, Job)
    one_by_one = run(prepared, group=False)
    with prepared.session_scope() as session:
        session.execute(delete(Job).where(Job.model_name != "old"))
    assert tallies(prepared) == counted(prepared)
    together = run(prepared, group=True)
    assert together == one_by_one
    seen, final_tallies, events = together
    assert [s[0] for s in seen].count("created") == 8
    assert ("TooManyRequests", "too_many_active_jobs") in seen
    assert ("TooManyRequests", "queue_full") in seen
    assert ("NotFound", "version_not_found") in seen
    assert ("Conflict", "source_dataset_unavailable") in seen
    assert final_tallies == counted(prepared) == {"queued": 9, "active:key_a": 3, "active:key_b": 2}
    with prepared.read_scope() as session:
        assert count(session, Job) == before + 8
        # Every created job came with its first event.
        assert events == count(session, Job)


def test_a_group_of_one_is_queued_as_alone(prepared: Database) -> None:
    with prepared.session_scope() as session:
        (result,) = jobs.queue_group(session, [jobs.Submission(draft("solo"), "solo", A)])
    assert not isinstance(result, Exception)
    job, created = result
    assert created and job.idempotency_key == "solo"
