"""Evaluation jobs and comparisons: scores stored with versions, side by side."""

from typing import Any

import numpy as np
import pandas as pd
from fastapi.testclient import TestClient
from sklearn.metrics import accuracy_score, f1_score, r2_score

from tests.helpers import assert_problem, csv_bytes, run_pending_jobs, upload


def _datasets(client: TestClient) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in client.get("/v1/datasets?limit=100").json()["data"]}


def _evaluate(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs/evaluation", json=body)
    assert response.status_code == 202, response.text
    run_pending_jobs(client.app.state.database)  # type: ignore[attr-defined]
    job: dict[str, Any] = client.get(f"/v1/jobs/{response.json()['id']}").json()
    return job


def _predict(client: TestClient, model: str, frame: pd.DataFrame) -> dict[str, Any]:
    records = frame.to_dict(orient="records")
    response = client.post(f"/v1/models/{model}/predict", json={"records": records})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_fine_tune_and_its_base_scored_on_the_target(trained_client: TestClient) -> None:
    target = _datasets(trained_client)["iris[100:150]"]
    job = _evaluate(
        trained_client,
        {
            "models": [{"name": "iris-parameter", "version": 1}, {"name": "iris-feature"}],
            "dataset_id": target["id"],
            "include_base": True,
            "chunk_rows": 16,
        },
    )
    assert job["status"] == "succeeded", job
    scored = [(e["model"]["name"], e["model"]["version"]) for e in job["metrics"]["evaluations"]]
    assert scored == [("iris-parameter", 1), ("iris-feature", 1), ("iris-source", 1)]

    # The stored scores are what the served model gives on those rows.
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    frame = iris.frame.iloc[100:150]
    labels = [str(iris.target_names[code]) for code in frame["target"]]
    features = frame.drop(columns="target")
    online = _predict(trained_client, "iris-parameter", features)
    stored = trained_client.get("/v1/models/iris-parameter/versions/1/evaluations").json()
    assert len(stored["data"]) == 1
    evaluation = stored["data"][0]
    assert evaluation["dataset"] == {
        "id": target["id"],
        "name": target["name"],
        "sha256": target["sha256"],
    }
    assert evaluation["job_id"] == job["id"] and evaluation["target_column"] == "target"
    metrics = evaluation["metrics"]
    predicted = online["predictions"]
    assert metrics["rows"] == 50 and metrics["unlabelled_rows"] == 0
    assert metrics["accuracy"] == accuracy_score(labels, predicted)
    assert np.isclose(metrics["f1_macro"], f1_score(labels, predicted, average="macro"))
    assert sum(map(sum, metrics["confusion_matrix"]["matrix"])) == 50
    assert metrics["log_loss"] is not None and metrics["calibration"]["bins"]

    # Rows 100-149 are all virginica, which the source (rows 0-99) knows of but never saw:
    # it gets none of them, and says so with full confidence.
    base = trained_client.get("/v1/models/iris-source/versions/1/evaluations").json()["data"][0]
    assert base["metrics"]["accuracy"] == 0.0
    assert base["metrics"]["calibration"]["expected_calibration_error"] > 0.9
    matrix = base["metrics"]["confusion_matrix"]
    assert matrix["matrix"][matrix["labels"].index("virginica")] == [0, 50, 0]

    compared = trained_client.get("/v1/models/iris-parameter/compare?versions=1").json()
    assert [(v["name"], v["version"], v["role"]) for v in compared["versions"]] == [
        ("iris-parameter", 1, "requested"),
        ("iris-source", 1, "base"),
    ]
    assert compared["versions"][0]["transfer"]["score"] is not None
    (on_target,) = compared["datasets"]
    assert on_target["dataset"]["id"] == target["id"]
    by_version = {(s["name"], s["version"]): s["metrics"] for s in on_target["scores"]}
    assert by_version[("iris-parameter", 1)]["accuracy"] == metrics["accuracy"]
    assert by_version[("iris-source", 1)]["accuracy"] == 0.0
    assert on_target["best"] == {"name": "iris-parameter", "version": 1}
    assert compared["headline_metrics"][0] == "accuracy"


def test_regression_scores_and_unlabelled_rows(trained_client: TestClient) -> None:
    from sklearn.datasets import load_diabetes

    frame = load_diabetes(as_frame=True).frame.iloc[:200].copy()
    frame.loc[[3, 150], "target"] = np.nan
    dataset = upload(trained_client, "diabetes-part.csv", csv_bytes(frame)).json()
    job = _evaluate(
        trained_client,
        {"models": [{"name": "diabetes", "version": 1}], "dataset_id": dataset["id"]},
    )
    assert job["status"] == "succeeded", job
    (evaluation,) = job["metrics"]["evaluations"]
    metrics = evaluation["metrics"]
    assert metrics["task"] == "regression"
    assert metrics["rows"] == 198 and metrics["unlabelled_rows"] == 2
    labelled = frame.dropna(subset=["target"])
    online = _predict(trained_client, "diabetes", labelled.drop(columns="target"))
    assert np.isclose(metrics["r2"], r2_score(labelled["target"], online["predictions"]), atol=1e-6)
    compared = trained_client.get("/v1/models/diabetes/compare?versions=1").json()
    assert compared["headline_metrics"] == ["r2", "rmse", "mae"]
    assert compared["datasets"][0]["scores"][0]["metrics"]["r2"] == metrics["r2"]


def test_refusals(trained_client: TestClient) -> None:
    target = _datasets(trained_client)["iris[100:150]"]
    post = trained_client.post
    url = "/v1/jobs/evaluation"
    ok = {"models": [{"name": "iris-parameter"}], "dataset_id": target["id"]}
    assert_problem(post(url, json={**ok, "models": []}), 422, "validation_error")
    assert_problem(post(url, json={**ok, "models": [{"name": "nope"}]}), 404, "model_not_found")
    body = assert_problem(post(url, json={**ok, "target_column": "label"}), 422, "column_not_found")
    assert "label" in body["detail"]
    body = assert_problem(
        post(url, json={**ok, "models": [{"name": "diabetes"}]}), 422, "feature_mismatch"
    )
    get = trained_client.get
    assert_problem(get("/v1/models/iris-parameter/compare?versions=1,x"), 422, "validation_error")
    assert_problem(get("/v1/models/iris-parameter/compare?versions=9"), 404, "version_not_found")
    assert_problem(get("/v1/models/nope/compare?versions=1"), 404, "model_not_found")
    assert_problem(
        get("/v1/models/iris-parameter/versions/9/evaluations"), 404, "version_not_found"
    )


def test_deleting_a_version_removes_its_evaluations(trained_client: TestClient) -> None:
    target = _datasets(trained_client)["iris[100:150]"]
    job = _evaluate(
        trained_client, {"models": [{"name": "iris-structure"}], "dataset_id": target["id"]}
    )
    assert job["status"] == "succeeded"
    assert trained_client.delete("/v1/models/iris-structure/versions/1").status_code == 204
    database = trained_client.app.state.database  # type: ignore[attr-defined]
    from sqlalchemy import func, select

    from app.db.models import ModelEvaluation

    with database.read_scope() as session:
        left = session.scalar(
            select(func.count())
            .select_from(ModelEvaluation)
            .where(ModelEvaluation.model_name == "iris-structure")
        )
    assert left == 0
