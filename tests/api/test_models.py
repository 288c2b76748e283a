import hashlib

from fastapi.testclient import TestClient
from safetensors.torch import load as load_safetensors

from tests.helpers import STRATEGIES, assert_problem


class TestRegistry:
    def test_models_listed(self, trained_client: TestClient) -> None:
        names = [m["name"] for m in trained_client.get("/v1/models").json()["data"]]
        assert set(names) == {"iris-source", *(f"iris-{s}" for s in STRATEGIES), "diabetes"}
        model = trained_client.get("/v1/models/iris-source").json()
        assert model["latest_version"] == 1 and model["aliases"] == {}

    def test_source_version_fields(self, trained_client: TestClient) -> None:
        version = trained_client.get("/v1/models/iris-source/versions/1").json()
        assert version["kind"] == "source" and version["strategy"] is None
        assert version["parent"] is None and version["task"] == "classification"
        assert version["signature"]["inputs"][0] == {
            "name": "sepal length (cm)",
            "dtype": "float64",
        }
        # The declared categories keep the full label space: 4 -> 10 -> 10 -> 3.
        assert version["signature"]["classes"] == ["setosa", "versicolor", "virginica"]
        assert version["architecture"]["hidden_layers"] == [10, 10]
        assert version["architecture"]["output_dim"] == 3
        assert set(version["metrics"]) >= {"train", "validation", "epochs_run"}
        assert version["metrics"]["train"]["accuracy"] > 0.9
        assert version["preprocessing"]["features"]["columns"][0]["kind"] == "numeric"
        assert version["hyperparameters"]["seed"] == 0
        assert version["job_id"].startswith("job_") and version["dataset_id"].startswith("ds_")

    def test_fine_tuned_lineage(self, trained_client: TestClient) -> None:
        for strategy in STRATEGIES:
            version = trained_client.get(f"/v1/models/iris-{strategy}/versions/1").json()
            assert version["kind"] == "fine_tuned"
            assert version["strategy"] == strategy
            assert version["parent"] == {"name": "iris-source", "version": 1}
            job = trained_client.get(f"/v1/jobs/{version['job_id']}").json()
            assert job["result"] == {"model_name": f"iris-{strategy}", "version": 1}

    def test_single_class_target_warns_and_completes(self, trained_client: TestClient) -> None:
        version = trained_client.get("/v1/models/iris-feature/versions/1").json()
        events = trained_client.get(
            f"/v1/jobs/{version['job_id']}/events", params={"limit": 200}
        ).json()["data"]
        warnings = [e["message"] for e in events if e["type"] == "warning"]
        assert any("single class" in w and "virginica" in w for w in warnings)

    def test_weights_download(self, trained_client: TestClient) -> None:
        version = trained_client.get("/v1/models/iris-source/versions/1").json()
        response = trained_client.get("/v1/models/iris-source/versions/1/weights")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        assert hashlib.sha256(response.content).hexdigest() == version["sha256"]
        assert len(response.content) == version["size_bytes"]
        tensors = load_safetensors(response.content)
        assert tensors["head.weight"].shape == (3, 10)

    def test_unknown_model_and_version(self, trained_client: TestClient) -> None:
        assert_problem(trained_client.get("/v1/models/nope"), 404, "model_not_found")
        assert_problem(trained_client.get("/v1/models/nope/versions"), 404, "model_not_found")
        assert_problem(
            trained_client.get("/v1/models/iris-source/versions/7"), 404, "version_not_found"
        )
        assert_problem(
            trained_client.get("/v1/models/iris-source/versions/7/weights"),
            404,
            "version_not_found",
        )
        assert_problem(
            trained_client.get("/v1/models/iris-source/versions/0"), 422, "validation_error"
        )


class TestAliases:
    def test_set_move_delete(self, trained_client: TestClient) -> None:
        client = trained_client
        client.post("/v1/jobs/source-training", json={})  # noise: must not matter
        response = client.put("/v1/models/iris-source/aliases/production", json={"version": 1})
        assert response.status_code == 200
        assert response.json() == {
            "name": "iris-source",
            "alias": "production",
            "version": 1,
            "previous_version": None,
        }
        assert client.get("/v1/models/iris-source").json()["aliases"] == {"production": 1}
        assert client.get("/v1/models/iris-source/versions/1").json()["aliases"] == ["production"]
        assert client.delete("/v1/models/iris-source/aliases/production").status_code == 204
        assert client.get("/v1/models/iris-source").json()["aliases"] == {}
        assert_problem(
            client.delete("/v1/models/iris-source/aliases/production"), 404, "alias_not_found"
        )

    def test_alias_to_missing_version_or_model(self, trained_client: TestClient) -> None:
        assert_problem(
            trained_client.put("/v1/models/iris-source/aliases/prod", json={"version": 5}),
            404,
            "version_not_found",
        )
        assert_problem(
            trained_client.put("/v1/models/nope/aliases/prod", json={"version": 1}),
            404,
            "model_not_found",
        )

    def test_invalid_alias_name(self, trained_client: TestClient) -> None:
        assert_problem(
            trained_client.put("/v1/models/iris-source/aliases/9lives", json={"version": 1}),
            422,
            "validation_error",
        )


class TestDeleteVersion:
    def test_aliased_version_is_409(self, trained_client: TestClient) -> None:
        trained_client.put("/v1/models/iris-feature/aliases/staging", json={"version": 1})
        problem = assert_problem(
            trained_client.delete("/v1/models/iris-feature/versions/1"), 409, "version_aliased"
        )
        assert "staging" in problem["detail"]

    def test_version_in_use_by_a_queued_job_is_409(self, trained_client: TestClient) -> None:
        target = trained_client.get("/v1/datasets").json()["data"]
        iris_target = next(d for d in target if d["name"] == "iris[100:150]")
        queued = trained_client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "iris-source"},
                "dataset_id": iris_target["id"],
                "target_column": "target",
                "model_name": "again",
                "strategy": "parameter",
            },
        )
        assert queued.status_code == 202, queued.text
        assert_problem(
            trained_client.delete("/v1/models/iris-source/versions/1"), 409, "version_in_use"
        )

    def test_delete_then_numbers_are_not_reused(self, trained_client: TestClient) -> None:
        assert trained_client.delete("/v1/models/iris-structure/versions/1").status_code == 204
        assert_problem(
            trained_client.get("/v1/models/iris-structure/versions/1"), 404, "version_not_found"
        )
        model = trained_client.get("/v1/models/iris-structure").json()
        assert model["latest_version"] is None
        page = trained_client.get("/v1/models/iris-structure/versions").json()
        assert page == {"data": [], "has_more": False}
