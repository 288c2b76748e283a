"""What a 2xx promises: committed before the answer, failures undone, lineage kept, and
deletes of jobs and models that leave nothing another object needs."""

import threading
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Job, JobEvent
from app.db.session import Database
from app.enums import EventType
from app.ids import utcnow
from app.jobs import queue, worker
from tests.helpers import FAST, assert_problem, builtin, run_pending_jobs, train_source


def _failing_commit(monkeypatch: pytest.MonkeyPatch, error: Exception) -> list[int]:
    """Make the next commit of a request's session raise `error` (once)."""
    calls: list[int] = []
    original = Session.commit

    def commit(self: Session) -> None:
        if not calls:
            calls.append(1)
            raise error
        original(self)

    monkeypatch.setattr(Session, "commit", commit)
    return calls


class TestFailedCommit:
    @pytest.mark.parametrize(
        ("message", "code"),
        [
            ("database or disk is full", "storage_full"),
            ("database is locked", "database_busy"),
            ("connection lost", "database_unavailable"),
        ],
    )
    def test_operational_error_is_503_and_nothing_is_written(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch, message: str, code: str
    ) -> None:
        calls = _failing_commit(monkeypatch, OperationalError("COMMIT", {}, Exception(message)))
        response = client.post("/v1/datasets/builtin", json={"name": "iris"})
        assert calls, "the route never committed"
        problem = assert_problem(response, 503, code)
        assert response.headers["retry-after"] == "1"
        assert "nothing was written" in problem["detail"]
        # Nothing of the driver's message or SQL reaches the client.
        assert "COMMIT" not in response.text
        assert client.get("/v1/datasets").json()["data"] == []

    def test_integrity_error_is_409(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        dataset = builtin(client, "iris")
        _failing_commit(monkeypatch, IntegrityError("DELETE", {}, Exception("FOREIGN KEY")))
        assert_problem(client.delete(f"/v1/datasets/{dataset['id']}"), 409, "conflict")
        assert client.get(f"/v1/datasets/{dataset['id']}").status_code == 200


def _queued_fine_tune(client: TestClient, dataset_id: str, **extra: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/jobs/fine-tuning",
        json={
            "base_model": {"name": "src", "version": 1},
            "dataset_id": dataset_id,
            "target_column": "target",
            "model_name": "tuned",
            "strategy": "parameter",
            "hyperparameters": FAST,
            **extra,
        },
    )
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.postgres
class TestDeleteJob:
    def test_finished_job_is_deleted_with_its_events_and_its_version_stays(
        self, client: TestClient, database: Database
    ) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        job = train_source(client, database, source["id"], "src")
        assert client.delete(f"/v1/jobs/{job['id']}").status_code == 204
        assert_problem(client.get(f"/v1/jobs/{job['id']}"), 404, "job_not_found")
        assert_problem(client.get(f"/v1/jobs/{job['id']}/events"), 404, "job_not_found")
        with database.read_scope() as session:
            assert session.scalars(select(JobEvent).where(JobEvent.job_id == job["id"])).all() == []
        version = client.get("/v1/models/src/versions/1").json()
        assert version["job_id"] == job["id"]
        assert client.post("/v1/models/src/predict", json={"instances": [[5, 3, 1, 0]]}).is_success
        assert_problem(client.delete(f"/v1/jobs/{job['id']}"), 404, "job_not_found")

    def test_queued_or_running_job_is_409(self, client: TestClient, database: Database) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        train_source(client, database, source["id"], "src")
        queued = _queued_fine_tune(client, source["id"])
        assert_problem(client.delete(f"/v1/jobs/{queued['id']}"), 409, "job_active")
        with database.session_scope() as session:
            assert queue.claim_next(session, "test-worker") == queued["id"]
        problem = assert_problem(client.delete(f"/v1/jobs/{queued['id']}"), 409, "job_active")
        assert "running" in problem["detail"]
        assert client.get(f"/v1/jobs/{queued['id']}").status_code == 200

    def test_cancelled_job_can_be_deleted(self, client: TestClient, database: Database) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        train_source(client, database, source["id"], "src")
        queued = _queued_fine_tune(client, source["id"])
        cancelled = client.post(f"/v1/jobs/{queued['id']}/cancel")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
        assert_problem(client.post(f"/v1/jobs/{queued['id']}/cancel"), 409, "job_finished")
        assert client.delete(f"/v1/jobs/{queued['id']}").status_code == 204


@pytest.mark.postgres
class TestDeleteModel:
    def test_model_versions_and_aliases_go(self, client: TestClient, database: Database) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        train_source(client, database, source["id"], "src")
        train_source(client, database, source["id"], "src")
        client.put("/v1/models/src/aliases/production", json={"version": 2})
        assert client.delete("/v1/models/src").status_code == 204
        assert_problem(client.get("/v1/models/src"), 404, "model_not_found")
        assert_problem(client.get("/v1/models/src/versions/1"), 404, "model_not_found")
        predict = client.post("/v1/models/src/predict", json={"instances": [[5, 3, 1, 0]]})
        assert_problem(predict, 404, "model_not_found")
        assert "src" not in [m["name"] for m in client.get("/v1/models").json()["data"]]
        assert_problem(client.delete("/v1/models/src"), 404, "model_not_found")
        # The name can be used again; the jobs that made the old versions are still listed.
        train_source(client, database, source["id"], "src")
        assert client.get("/v1/models/src").json()["latest_version"] == 1

    def test_model_in_use_is_409(self, client: TestClient, database: Database) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        train_source(client, database, source["id"], "src")
        queued = _queued_fine_tune(client, source["id"])
        problem = assert_problem(client.delete("/v1/models/src"), 409, "model_in_use")
        assert queued["id"] in problem["detail"]
        assert client.get("/v1/models/src/versions/1").status_code == 200
        # A queued job that will register a version into the model also holds it.
        client.post(f"/v1/jobs/{queued['id']}/cancel")
        response = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": source["id"],
                "target_column": "target",
                "model_name": "src",
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202
        assert_problem(client.delete("/v1/models/src"), 409, "model_in_use")


@pytest.mark.postgres
class TestDatasetsInUse:
    def test_joint_source_dataset_is_held_by_a_queued_joint_job(
        self, client: TestClient, database: Database
    ) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        target = builtin(client, "iris", start=100, stop=150)
        train_source(client, database, source["id"], "src")
        joint = _queued_fine_tune(client, target["id"], strategy="joint")
        problem = assert_problem(
            client.delete(f"/v1/datasets/{source['id']}"), 409, "dataset_in_use"
        )
        assert joint["id"] in problem["detail"]
        client.post(f"/v1/jobs/{joint['id']}/cancel")
        assert client.delete(f"/v1/datasets/{source['id']}").status_code == 204

    def test_other_strategies_do_not_hold_the_source_dataset(
        self, client: TestClient, database: Database
    ) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        target = builtin(client, "iris", start=100, stop=150)
        train_source(client, database, source["id"], "src")
        _queued_fine_tune(client, target["id"])
        assert client.delete(f"/v1/datasets/{source['id']}").status_code == 204
        assert_problem(client.delete(f"/v1/datasets/{target['id']}"), 409, "dataset_in_use")


@pytest.mark.postgres
class TestLineage:
    def test_every_version_names_its_datasets_and_their_hashes(
        self, client: TestClient, database: Database
    ) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        target = builtin(client, "iris", start=100, stop=150)
        train_source(client, database, source["id"], "src")
        _queued_fine_tune(client, target["id"])
        _queued_fine_tune(client, target["id"], strategy="joint", model_name="joint")
        run_pending_jobs(database)
        root = client.get("/v1/models/src/versions/1").json()["lineage"]
        assert len(root) == 1
        assert root[0]["name"] == "src" and root[0]["kind"] == "source"
        assert root[0]["datasets"] == [
            {
                "id": source["id"],
                "role": "training",
                "name": source["name"],
                "sha256": source["sha256"],
                "rows": 100,
                "size_bytes": source["size_bytes"],
            }
        ]
        tuned = client.get("/v1/models/tuned/versions/1").json()
        assert [(e["name"], e["version"]) for e in tuned["lineage"]] == [("tuned", 1), ("src", 1)]
        assert tuned["lineage"][0]["strategy"] == "parameter"
        assert tuned["lineage"][0]["job_id"] == tuned["job_id"]
        assert [d["sha256"] for d in tuned["lineage"][0]["datasets"]] == [target["sha256"]]
        assert tuned["lineage"][1] == root[0]
        joint = client.get("/v1/models/joint/versions/1").json()["lineage"]
        assert [(d["role"], d["sha256"]) for d in joint[0]["datasets"]] == [
            ("training", target["sha256"]),
            ("joint_source", source["sha256"]),
        ]

    def test_lineage_outlives_deleted_datasets_and_parents(
        self, client: TestClient, database: Database
    ) -> None:
        source = builtin(client, "iris", start=0, stop=100)
        target = builtin(client, "iris", start=100, stop=150)
        train_source(client, database, source["id"], "src")
        _queued_fine_tune(client, target["id"])
        run_pending_jobs(database)
        before = client.get("/v1/models/tuned/versions/1").json()["lineage"]
        assert client.delete(f"/v1/datasets/{source['id']}").status_code == 204
        assert client.delete(f"/v1/datasets/{target['id']}").status_code == 204
        assert client.delete("/v1/models/src").status_code == 204
        assert client.get("/v1/models/tuned/versions/1").json()["lineage"] == before


@pytest.mark.postgres
class TestEventRetention:
    def _finished_job(self, client: TestClient, database: Database) -> str:
        source = builtin(client, "iris", start=0, stop=100)
        job_id: str = train_source(client, database, source["id"], "src")["id"]
        return job_id

    def _ended_days_ago(self, database: Database, job_id: str, days: float) -> None:
        with database.session_scope() as session:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(finished_at=utcnow() - timedelta(days=days))
            )

    def _types(self, database: Database, job_id: str) -> set[str]:
        with database.read_scope() as session:
            return set(session.scalars(select(JobEvent.type).where(JobEvent.job_id == job_id)))

    def test_old_jobs_keep_only_status_events(self, client: TestClient, database: Database) -> None:
        old = self._finished_job(client, database)
        recent = self._finished_job(client, database)
        assert EventType.METRICS in self._types(database, old)
        self._ended_days_ago(database, old, 31)
        with database.session_scope() as session:
            pruned = queue.prune_events(session, older_than_days=30)
        assert pruned > 0
        assert self._types(database, old) == {EventType.STATUS}
        assert EventType.METRICS in self._types(database, recent)
        assert client.get(f"/v1/jobs/{old}").json()["status"] == "succeeded"

    def test_the_sweep_prunes_by_the_setting_and_zero_keeps_all(
        self,
        client: TestClient,
        database: Database,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        old = self._finished_job(client, database)
        self._ended_days_ago(database, old, 3)
        monkeypatch.setattr(worker, "_last_prune", -worker.PRUNE_EVERY_SECONDS)
        worker.sweep(database, settings.model_copy(update={"job_events_retention_days": 0}))
        worker.wait_for_pruning(30)
        assert EventType.METRICS in self._types(database, old)
        monkeypatch.setattr(worker, "_last_prune", -worker.PRUNE_EVERY_SECONDS)
        worker.sweep(database, settings.model_copy(update={"job_events_retention_days": 2}))
        worker.wait_for_pruning(30)
        assert self._types(database, old) == {EventType.STATUS}

    def test_a_prune_rests_in_proportion_to_each_batch_and_stops_when_asked(
        self,
        client: TestClient,
        database: Database,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The sweep prunes in a thread of its own (the worker goes on taking jobs), and
        rests between batches: the write lock is held a small share of the time."""
        old = [self._finished_job(client, database) for _ in range(3)]
        for n, job_id in enumerate(old):
            self._ended_days_ago(database, job_id, 3 + n)
        rests: list[float] = []
        stop = threading.Event()

        class Rests:
            def is_set(self) -> bool:
                return stop.is_set()

            def wait(self, seconds: float) -> bool:
                rests.append(seconds)
                if len(rests) == 2:
                    stop.set()  # as a worker's shutdown would
                return stop.is_set()

        monkeypatch.setattr(worker, "PRUNE_EVENT_JOBS", 1)
        monkeypatch.setattr(worker, "_events_cursor", queue.PruneCursor())
        monkeypatch.setattr(worker, "_prune_stop", Rests())
        monkeypatch.setattr(worker, "_last_prune", -worker.PRUNE_EVERY_SECONDS)
        worker.sweep(database, settings.model_copy(update={"job_events_retention_days": 2}))
        worker.wait_for_pruning(30)
        assert not worker.pruning()
        assert len(rests) == 2, "the prune went on after it was asked to stop"
        assert all(rest >= worker.PRUNE_PAUSE_SECONDS for rest in rests)
        # Stopped after two batches of one job, oldest first: the latest to end keeps its
        # events.
        assert [EventType.METRICS in self._types(database, job) for job in old] == [
            True,
            False,
            False,
        ]

    def test_pruning_goes_a_small_batch_at_a_time_to_the_end(
        self,
        client: TestClient,
        database: Database,
        settings: Settings,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        old = [self._finished_job(client, database) for _ in range(5)]
        for n, job_id in enumerate(old):
            self._ended_days_ago(database, job_id, 3 + n)
        batches: list[int] = []
        real = queue.prune_events

        def counted(session: Any, **options: Any) -> int:
            covered = real(session, **options)
            batches.append(covered)
            return covered

        monkeypatch.setattr(worker, "PRUNE_EVENT_JOBS", 2)
        monkeypatch.setattr(worker, "PRUNE_PAUSE_SECONDS", 0.0)
        monkeypatch.setattr(worker, "_events_cursor", queue.PruneCursor())
        monkeypatch.setattr(queue, "prune_events", counted)
        worker.prune(database, settings.model_copy(update={"job_events_retention_days": 2}))
        # Two jobs a batch, each job once, in the order they ended.
        assert batches == [2, 2, 1]
        for job_id in old:
            assert self._types(database, job_id) == {EventType.STATUS}
        # The next prune starts where this one stopped: nothing left to read again.
        batches.clear()
        worker.prune(database, settings.model_copy(update={"job_events_retention_days": 2}))
        assert batches == [0]

    def test_finished_jobs_past_their_retention_go_with_their_events(
        self, client: TestClient, database: Database, settings: Settings
    ) -> None:
        old = self._finished_job(client, database)
        recent = self._finished_job(client, database)
        source = builtin(client, "iris", start=0, stop=100)
        queued = client.post(
            "/v1/jobs/source-training",
            json={"dataset_id": source["id"], "target_column": "target", "model_name": "later"},
        ).json()["id"]
        self._ended_days_ago(database, old, 9)
        keep_all = settings.model_copy(update={"job_retention_days": 0})
        worker.prune(database, keep_all)
        assert client.get(f"/v1/jobs/{old}").status_code == 200
        worker.prune(database, settings.model_copy(update={"job_retention_days": 7}))
        assert client.get(f"/v1/jobs/{old}").status_code == 404
        assert self._types(database, old) == set()
        assert client.get(f"/v1/jobs/{recent}").status_code == 200
        assert client.get(f"/v1/jobs/{queued}").json()["status"] == "queued"
        # The version the pruned job made keeps its job id and lineage.
        version = client.get("/v1/models/src/versions/1").json()
        assert version["job_id"] == old and version["lineage"][0]["job_id"] == old
