import pytest
from fastapi.testclient import TestClient

from tests.helpers import STRATEGIES, assert_problem

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]


class TestPredict:
    def test_source_model_instances(self, trained_client: TestClient) -> None:
        response = trained_client.post(
            "/v1/models/iris-source/predict", json={"instances": [SETOSA]}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == {"name": "iris-source", "version": 1}
        assert body["predictions"] == ["setosa"]
        assert body["classes"] == ["setosa", "versicolor", "virginica"]
        assert len(body["probabilities"][0]) == 3
        assert sum(body["probabilities"][0]) == pytest.approx(1.0, abs=1e-5)

    def test_records_equal_instances(self, trained_client: TestClient) -> None:
        by_position = trained_client.post(
            "/v1/models/iris-source/predict", json={"instances": [SETOSA, VIRGINICA]}
        ).json()
        records = [dict(zip(NAMES, row, strict=True)) for row in (SETOSA, VIRGINICA)]
        by_name = trained_client.post(
            "/v1/models/iris-source/predict", json={"records": records}
        ).json()
        assert by_name == by_position

    @pytest.mark.parametrize("strategy", STRATEGIES)
    def test_each_fine_tuned_version_predicts(
        self, trained_client: TestClient, strategy: str
    ) -> None:
        body = trained_client.post(
            f"/v1/models/iris-{strategy}/predict", json={"instances": [VIRGINICA]}
        ).json()
        assert body["model"] == {"name": f"iris-{strategy}", "version": 1}
        assert body["predictions"][0] in {"setosa", "versicolor", "virginica"}

    def test_regression(self, trained_client: TestClient) -> None:
        version = trained_client.get("/v1/models/diabetes/versions/1").json()
        assert version["task"] == "regression" and version["signature"]["classes"] is None
        width = len(version["signature"]["inputs"])
        body = trained_client.post(
            "/v1/models/diabetes/predict", json={"instances": [[0.0] * width]}
        ).json()
        assert "classes" not in body or body["classes"] is None
        assert isinstance(body["predictions"][0], float)
        # Standardisation is undone: diabetes targets live around 25-346.
        assert 25 < body["predictions"][0] < 346

    def test_default_is_production_alias_then_latest(self, trained_client: TestClient) -> None:
        client = trained_client
        assert (
            client.post("/v1/models/iris-source/predict", json={"instances": [SETOSA]}).json()[
                "model"
            ]["version"]
            == 1
        )
        client.put("/v1/models/iris-source/aliases/production", json={"version": 1})
        by_alias = client.post(
            "/v1/models/iris-source/predict?alias=production", json={"instances": [SETOSA]}
        )
        assert by_alias.json()["model"]["version"] == 1
        by_version = client.post(
            "/v1/models/iris-source/predict?version=1", json={"instances": [SETOSA]}
        )
        assert by_version.status_code == 200


class TestPredictErrors:
    def post(self, client: TestClient, body: object, query: str = "") -> object:
        return client.post(f"/v1/models/iris-source/predict{query}", json=body)

    def test_wrong_number_of_features(self, trained_client: TestClient) -> None:
        problem = assert_problem(
            self.post(trained_client, {"instances": [[1.0, 2.0, 3.0]]}), 422, "feature_mismatch"
        )
        assert (
            "expected 4 features" in problem["detail"]
            and "got 3 in instance 0" in (problem["detail"])
        )

    def test_missing_and_unknown_record_fields(self, trained_client: TestClient) -> None:
        record = dict(zip(NAMES[:3], SETOSA[:3], strict=True)) | {"colour": 1}
        problem = assert_problem(
            self.post(trained_client, {"records": [record]}), 422, "feature_mismatch"
        )
        assert "petal width (cm)" in problem["detail"] and "colour" in problem["detail"]

    def test_non_numeric_value(self, trained_client: TestClient) -> None:
        problem = assert_problem(
            self.post(trained_client, {"instances": [[5.1, "wide", 1.4, 0.2]]}), 422, "invalid_data"
        )
        assert "sepal width (cm)" in problem["detail"] and "wide" in problem["detail"]

    def test_null_value(self, trained_client: TestClient) -> None:
        assert_problem(
            self.post(trained_client, {"instances": [[5.1, None, 1.4, 0.2]]}), 422, "invalid_data"
        )

    def test_non_finite_value(self, trained_client: TestClient) -> None:
        response = trained_client.post(
            "/v1/models/iris-source/predict",
            content=b'{"instances": [[5.1, NaN, 1.4, 0.2]]}',
            headers={"content-type": "application/json"},
        )
        assert response.status_code == 422
        assert response.headers["content-type"].startswith("application/problem+json")

    def test_empty_and_ambiguous_bodies(self, trained_client: TestClient) -> None:
        assert_problem(self.post(trained_client, {"instances": []}), 422, "validation_error")
        assert_problem(self.post(trained_client, {}), 422, "validation_error")
        assert_problem(
            self.post(trained_client, {"instances": [SETOSA], "records": []}),
            422,
            "validation_error",
        )

    def test_unknown_model_version_alias(self, trained_client: TestClient) -> None:
        body = {"instances": [SETOSA]}
        assert_problem(
            trained_client.post("/v1/models/nope/predict", json=body), 404, "model_not_found"
        )
        assert_problem(self.post(trained_client, body, "?version=3"), 404, "version_not_found")
        assert_problem(self.post(trained_client, body, "?alias=canary"), 404, "alias_not_found")
        assert_problem(
            self.post(trained_client, body, "?version=1&alias=canary"), 422, "invalid_selector"
        )
