from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.session import Database
from tests.helpers import FAST, assert_problem, builtin, run_pending_jobs, train_source, upload

# Database-level behaviour: also run on PostgreSQL when GRAFT_TEST_DATABASE_URL is set.
pytestmark = pytest.mark.postgres


@pytest.fixture
def iris_source(client: TestClient) -> dict[str, Any]:
    return builtin(client, "iris", start=0, stop=100)


@pytest.fixture
def iris_target(client: TestClient) -> dict[str, Any]:
    return builtin(client, "iris", start=100, stop=150)


def source_body(dataset_id: str, **extra: Any) -> dict[str, Any]:
    return {"dataset_id": dataset_id, "target_column": "target", "model_name": "iris-src", **extra}


class TestCreateSourceTraining:
    def test_accepted_with_location_and_defaults(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        response = client.post("/v1/jobs/source-training", json=source_body(iris_source["id"]))
        assert response.status_code == 202
        job = response.json()
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert job["status"] == "queued" and job["kind"] == "source_training"
        assert job["request"]["architecture"] == {
            "type": "mlp",
            "hidden_layers": [64, 64],
            "dropout": 0.0,
            "activation": "relu",
        }
        assert job["request"]["hyperparameters"]["optimizer"] == "adam"
        assert job["progress"] == {
            "epoch": 0,
            "epochs": 100,
            "elapsed_seconds": None,
            "eta_seconds": None,
            "estimated_finish_at": None,
            "rows_done": None,  # batch prediction and evaluation count rows instead
            "rows_total": None,
        }
        assert job["request"]["timeout_seconds"] is None
        assert job["result"] is None and job["error"] is None

    def test_unknown_dataset_is_404(self, client: TestClient) -> None:
        response = client.post("/v1/jobs/source-training", json=source_body("ds_nope"))
        assert_problem(response, 404, "dataset_not_found")

    def test_a_deleted_dataset_is_404_though_a_draft_has_read_it_before(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        # Drafts keep what they read of a dataset (it never changes); whether it still
        # exists is checked by the write.
        refused = client.post(
            "/v1/jobs/source-training", json=source_body(iris_source["id"], target_column="x")
        )
        assert_problem(refused, 422, "column_not_found")
        assert client.delete(f"/v1/datasets/{iris_source['id']}").status_code == 204
        response = client.post("/v1/jobs/source-training", json=source_body(iris_source["id"]))
        assert_problem(response, 404, "dataset_not_found")
        assert client.get("/v1/jobs").json()["data"] == []

    def test_missing_target_column_is_422(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        body = source_body(iris_source["id"], target_column="species")
        problem = assert_problem(
            client.post("/v1/jobs/source-training", json=body), 422, "column_not_found"
        )
        assert "'species'" in problem["detail"] and "sepal length (cm)" in problem["detail"]

    def test_missing_feature_column_is_422(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        body = source_body(iris_source["id"], feature_columns=["sepal length (cm)", "nope"])
        problem = assert_problem(
            client.post("/v1/jobs/source-training", json=body), 422, "column_not_found"
        )
        assert "nope" in problem["detail"]

    def test_target_as_feature_is_422(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        body = source_body(iris_source["id"], feature_columns=["target"])
        assert_problem(
            client.post("/v1/jobs/source-training", json=body), 422, "invalid_feature_columns"
        )

    def test_regression_on_text_target_is_422(self, client: TestClient) -> None:
        dataset = upload(client, "t.csv", b"x,y\n1,a\n2,b\n3,a\n").json()
        body = {
            "dataset_id": dataset["id"],
            "target_column": "y",
            "model_name": "m",
            "task": "regression",
        }
        assert_problem(client.post("/v1/jobs/source-training", json=body), 422, "invalid_target")

    @pytest.mark.parametrize(
        ("field", "value", "loc"),
        [
            ("hyperparameters", {"epochs": 0}, ["body", "hyperparameters", "epochs"]),
            (
                "hyperparameters",
                {"learning_rate": -1},
                ["body", "hyperparameters", "learning_rate"],
            ),
            ("hyperparameters", {"optimizer": "lbfgs"}, ["body", "hyperparameters", "optimizer"]),
            (
                "hyperparameters",
                {"validation_fraction": 0.9},
                ["body", "hyperparameters", "validation_fraction"],
            ),
            ("hyperparameters", {"epoch": 3}, ["body", "hyperparameters", "epoch"]),
            ("architecture", {"hidden_layers": [0]}, ["body", "architecture"]),
            ("architecture", {"activation": "swish"}, ["body", "architecture", "activation"]),
            ("model_name", "bad name!", ["body", "model_name"]),
            ("task", "clustering", ["body", "task"]),
        ],
    )
    def test_out_of_range_fields_are_422(
        self,
        client: TestClient,
        iris_source: dict[str, Any],
        field: str,
        value: Any,
        loc: list[str],
    ) -> None:
        body = source_body(iris_source["id"], **{field: value})
        problem = assert_problem(
            client.post("/v1/jobs/source-training", json=body), 422, "validation_error"
        )
        assert problem["errors"][0]["loc"][: len(loc)] == loc
        assert ".".join(loc[1:]) in problem["detail"]

    def test_malformed_json_is_422_problem(self, client: TestClient) -> None:
        response = client.post(
            "/v1/jobs/source-training",
            content=b'{"dataset_id": ',
            headers={"content-type": "application/json"},
        )
        problem = assert_problem(response, 422, "validation_error")
        assert "invalid JSON" in problem["detail"]

    def test_nothing_is_queued_after_a_rejected_request(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        client.post(
            "/v1/jobs/source-training", json=source_body(iris_source["id"], target_column="nope")
        )
        assert client.get("/v1/jobs").json()["data"] == []


class TestIdempotency:
    def test_same_key_returns_the_first_job(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        body = source_body(iris_source["id"])
        headers = {"Idempotency-Key": "abc-1"}
        first = client.post("/v1/jobs/source-training", json=body, headers=headers)
        second = client.post("/v1/jobs/source-training", json=body, headers=headers)
        assert first.status_code == second.status_code == 202
        assert first.json()["id"] == second.json()["id"]
        assert second.headers["idempotent-replayed"] == "true"
        assert len(client.get("/v1/jobs").json()["data"]) == 1

    def test_same_key_other_body_is_422(
        self, client: TestClient, iris_source: dict[str, Any]
    ) -> None:
        headers = {"Idempotency-Key": "abc-2"}
        client.post(
            "/v1/jobs/source-training", json=source_body(iris_source["id"]), headers=headers
        )
        other = source_body(iris_source["id"], model_name="other")
        response = client.post("/v1/jobs/source-training", json=other, headers=headers)
        assert_problem(response, 422, "idempotency_key_reused")


class TestFineTuningValidation:
    @pytest.fixture
    def source_model(
        self, client: TestClient, database: Database, iris_source: dict[str, Any]
    ) -> dict[str, Any]:
        return train_source(client, database, iris_source["id"], "iris-src")

    def body(self, dataset_id: str, **extra: Any) -> dict[str, Any]:
        return {
            "base_model": {"name": "iris-src"},
            "dataset_id": dataset_id,
            "target_column": "target",
            "model_name": "iris-tgt",
            "strategy": "feature",
            **extra,
        }

    def test_accepted_and_pinned(
        self, client: TestClient, source_model: dict[str, Any], iris_target: dict[str, Any]
    ) -> None:
        response = client.post("/v1/jobs/fine-tuning", json=self.body(iris_target["id"]))
        assert response.status_code == 202, response.text
        assert response.json()["kind"] == "fine_tuning"
        assert response.json()["base_model"] == {"name": "iris-src", "version": 1}

    def test_unknown_model_version_alias(
        self, client: TestClient, source_model: dict[str, Any], iris_target: dict[str, Any]
    ) -> None:
        ds = iris_target["id"]
        assert_problem(
            client.post("/v1/jobs/fine-tuning", json=self.body(ds, base_model={"name": "nope"})),
            404,
            "model_not_found",
        )
        assert_problem(
            client.post(
                "/v1/jobs/fine-tuning",
                json=self.body(ds, base_model={"name": "iris-src", "version": 9}),
            ),
            404,
            "version_not_found",
        )
        assert_problem(
            client.post(
                "/v1/jobs/fine-tuning",
                json=self.body(ds, base_model={"name": "iris-src", "alias": "prod"}),
            ),
            404,
            "alias_not_found",
        )

    def test_version_and_alias_together_pin_the_alias(
        self, client: TestClient, source_model: dict[str, Any], iris_target: dict[str, Any]
    ) -> None:
        def submit(version: int) -> Any:
            base = {"name": "iris-src", "version": version, "alias": "a"}
            return client.post(
                "/v1/jobs/fine-tuning", json=self.body(iris_target["id"], base_model=base)
            )

        assert_problem(submit(1), 404, "alias_not_found")
        assert client.put("/v1/models/iris-src/aliases/a", json={"version": 1}).status_code == 200
        assert_problem(submit(2), 409, "alias_mismatch")
        accepted = submit(1)
        assert accepted.status_code == 202, accepted.text
        assert accepted.json()["base_model"] == {"name": "iris-src", "version": 1}

    def test_unknown_strategy_is_422(
        self, client: TestClient, source_model: dict[str, Any], iris_target: dict[str, Any]
    ) -> None:
        body = self.body(iris_target["id"], strategy="magic")
        problem = assert_problem(
            client.post("/v1/jobs/fine-tuning", json=body), 422, "validation_error"
        )
        assert "parameter" in problem["detail"]

    def test_features_that_do_not_match_are_422(
        self, client: TestClient, source_model: dict[str, Any]
    ) -> None:
        wine = builtin(client, "wine")
        problem = assert_problem(
            client.post("/v1/jobs/fine-tuning", json=self.body(wine["id"])), 422, "feature_mismatch"
        )
        assert "expects 4 features" in problem["detail"]
        assert "sepal length (cm)" in problem["detail"]

    def test_feature_of_wrong_type_is_422(
        self, client: TestClient, source_model: dict[str, Any]
    ) -> None:
        content = (
            b"sepal length (cm),sepal width (cm),petal length (cm),petal width (cm),target\n"
            b"a,1,1,1,x\nb,2,2,2,y\n"
        )
        dataset = upload(client, "t.csv", content).json()
        assert_problem(
            client.post("/v1/jobs/fine-tuning", json=self.body(dataset["id"])),
            422,
            "feature_mismatch",
        )

    def test_missing_target_is_422(
        self, client: TestClient, source_model: dict[str, Any], iris_target: dict[str, Any]
    ) -> None:
        body = self.body(iris_target["id"], target_column="label")
        assert_problem(client.post("/v1/jobs/fine-tuning", json=body), 422, "column_not_found")

    def test_regression_base_needs_numeric_target(
        self, client: TestClient, database: Database
    ) -> None:
        diabetes = builtin(client, "diabetes", stop=100)
        train_source(client, database, diabetes["id"], "dia")
        frame_cols = [c["name"] for c in diabetes["columns"] if c["name"] != "target"]
        header = ",".join([*frame_cols, "target"]).encode()
        row = ",".join(["0.1"] * len(frame_cols) + ["high"]).encode()
        dataset = upload(client, "t.csv", header + b"\n" + row + b"\n" + row + b"\n").json()
        body = {
            "base_model": {"name": "dia"},
            "dataset_id": dataset["id"],
            "target_column": "target",
            "model_name": "dia2",
            "strategy": "parameter",
        }
        assert_problem(client.post("/v1/jobs/fine-tuning", json=body), 422, "target_mismatch")


class TestReadAndCancel:
    def test_get_list_filter(
        self, client: TestClient, database: Database, iris_source: dict[str, Any]
    ) -> None:
        done = train_source(client, database, iris_source["id"])
        queued = client.post("/v1/jobs/source-training", json=source_body(iris_source["id"])).json()
        assert client.get(f"/v1/jobs/{done['id']}").json()["status"] == "succeeded"
        ids = [j["id"] for j in client.get("/v1/jobs").json()["data"]]
        assert ids == [queued["id"], done["id"]]
        only_queued = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
        assert [j["id"] for j in only_queued] == [queued["id"]]
        by_kind = client.get("/v1/jobs", params={"kind": "fine_tuning"}).json()["data"]
        assert by_kind == []
        assert_problem(client.get("/v1/jobs", params={"status": "done"}), 422, "validation_error")

    def test_unknown_job_is_404(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/jobs/job_nope"), 404, "job_not_found")
        assert_problem(client.post("/v1/jobs/job_nope/cancel"), 404, "job_not_found")
        assert_problem(client.get("/v1/jobs/job_nope/events"), 404, "job_not_found")

    def test_cancel_queued_then_409(
        self, client: TestClient, database: Database, iris_source: dict[str, Any]
    ) -> None:
        job = client.post("/v1/jobs/source-training", json=source_body(iris_source["id"])).json()
        response = client.post(f"/v1/jobs/{job['id']}/cancel")
        assert response.status_code == 202
        assert response.json()["status"] == "cancelled"
        assert run_pending_jobs(database) == []
        assert_problem(client.post(f"/v1/jobs/{job['id']}/cancel"), 409, "job_finished")
        assert client.get("/v1/models").json()["data"] == []

    def test_events_oldest_first_with_metrics_per_epoch(
        self, client: TestClient, database: Database, iris_source: dict[str, Any]
    ) -> None:
        job = train_source(client, database, iris_source["id"])
        events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 200}).json()["data"]
        seqs = [e["seq"] for e in events]
        assert seqs == list(range(1, len(events) + 1))
        metrics = [e["data"] for e in events if e["type"] == "metrics"]
        assert [m["epoch"] for m in metrics] == list(range(1, FAST["epochs"] + 1))
        assert {"train_loss", "val_loss", "val_accuracy"} <= set(metrics[0])
        assert events[0]["data"]["status"] == "queued"
        assert events[-1]["data"]["status"] == "succeeded"
        later = client.get(f"/v1/jobs/{job['id']}/events", params={"after": 5, "limit": 3}).json()
        assert [e["seq"] for e in later["data"]] == [6, 7, 8] and later["has_more"]
