"""Submission drafts a job from a read-only session and queues it in a short write
transaction: whatever is deleted between the two is caught, and nothing is written."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app.db.models import Job, JobEvent
from app.db.session import Database
from app.errors import Conflict, NotFound
from app.schemas.jobs import FineTuningCreate, SourceTrainingCreate
from app.services import datasets, job_drafts, registry
from app.services import jobs as jobs_service
from tests.helpers import FAST, builtin, train_source

pytestmark = pytest.mark.postgres


def jobs_written(database: Database) -> tuple[int, int]:
    with database.read_scope() as session:
        return (
            int(session.scalar(select(func.count()).select_from(Job)) or 0),
            int(session.scalar(select(func.count()).select_from(JobEvent)) or 0),
        )


def draft(database: Database, drafting: Any) -> job_drafts.JobDraft:
    with database.read_scope() as session:
        drafted: job_drafts.JobDraft = drafting(session)
        return drafted


def test_a_dataset_deleted_after_the_draft_is_404_and_nothing_is_queued(
    client: TestClient, database: Database
) -> None:
    dataset = builtin(client, "iris")
    request = SourceTrainingCreate.model_validate(
        {"dataset_id": dataset["id"], "target_column": "target", "model_name": "m"}
    )
    drafted = draft(database, lambda s: job_drafts.draft_source_training(s, request))
    with database.session_scope() as session:
        datasets.delete(session, dataset["id"])
    before = jobs_written(database)
    with pytest.raises(NotFound) as refused, database.session_scope() as session:
        jobs_service.queue(session, drafted, None, jobs_service.Caller())
    assert refused.value.code == "dataset_not_found"
    assert jobs_written(database) == before


def test_a_base_version_deleted_after_the_draft_is_404(
    client: TestClient, database: Database
) -> None:
    source = builtin(client, "iris", start=0, stop=100)
    target = builtin(client, "iris", start=100, stop=150)
    train_source(client, database, source["id"], "src")
    request = FineTuningCreate.model_validate(
        {
            "base_model": {"name": "src"},
            "dataset_id": target["id"],
            "target_column": "target",
            "model_name": "tuned",
            "strategy": "parameter",
            "hyperparameters": FAST,
        }
    )
    drafted = draft(database, lambda s: job_drafts.draft_fine_tuning(s, request))
    assert (drafted.base_model_name, drafted.base_model_version) == ("src", 1)
    with database.session_scope() as session:
        registry.delete_version(session, "src", 1)
    before = jobs_written(database)
    with pytest.raises(NotFound) as refused, database.session_scope() as session:
        jobs_service.queue(session, drafted, None, jobs_service.Caller())
    assert refused.value.code == "version_not_found"
    assert jobs_written(database) == before


def test_a_joint_source_deleted_after_the_draft_is_409(
    client: TestClient, database: Database
) -> None:
    source = builtin(client, "iris", start=0, stop=100)
    target = builtin(client, "iris", start=100, stop=150)
    train_source(client, database, source["id"], "src")
    request = FineTuningCreate.model_validate(
        {
            "base_model": {"name": "src", "version": 1},
            "dataset_id": target["id"],
            "target_column": "target",
            "model_name": "tuned",
            "strategy": "joint",
            "hyperparameters": FAST,
        }
    )
    drafted = draft(database, lambda s: job_drafts.draft_fine_tuning(s, request))
    assert drafted.source_dataset_id == source["id"]
    with database.session_scope() as session:
        datasets.delete(session, source["id"])
    with pytest.raises(Conflict) as refused, database.session_scope() as session:
        jobs_service.queue(session, drafted, None, jobs_service.Caller())
    assert refused.value.code == "source_dataset_unavailable"


def test_the_response_is_the_job_as_read_back(client: TestClient) -> None:
    """The submission answers with JSON it writes itself: it must equal a later GET."""
    dataset = builtin(client, "iris")
    body = {"dataset_id": dataset["id"], "target_column": "target", "model_name": "m"}
    created = client.post("/v1/jobs/source-training", json=body, headers={"Idempotency-Key": "k1"})
    assert created.status_code == 202
    assert created.headers["content-type"] == "application/json"
    job = created.json()
    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    replay = client.post("/v1/jobs/source-training", json=body, headers={"Idempotency-Key": "k1"})
    assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == job
