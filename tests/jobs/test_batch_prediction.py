"""Batch prediction jobs: a stored dataset through a version into a downloadable dataset."""

import io
import json
from typing import Any

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.datasets import load_iris
from sqlalchemy import func, select

from app.db.models import DatasetPart
from tests.helpers import assert_problem, csv_bytes, run_pending_jobs, upload


def _iris_rows(rows: int, seed: int = 0) -> pd.DataFrame:
    iris = load_iris(as_frame=True).frame.drop(columns="target")
    sample = iris.sample(rows, replace=True, random_state=seed).reset_index(drop=True)
    sample.insert(0, "row_id", [f"r{i}" for i in range(rows)])
    return sample


def _run(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs/batch-prediction", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["progress"]["rows_total"] > 0
    run_pending_jobs(client.app.state.database)  # type: ignore[attr-defined]
    job: dict[str, Any] = client.get(f"/v1/jobs/{response.json()['id']}").json()
    return job


def _online(client: TestClient, frame: pd.DataFrame, **query: Any) -> dict[str, Any]:
    records = frame.drop(columns="row_id").to_dict(orient="records")
    response = client.post(
        "/v1/models/iris-parameter/predict", params=query, json={"records": records}
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_batch_prediction_matches_online_predictions(trained_client: TestClient, fmt: str) -> None:
    frame = _iris_rows(2_345)
    dataset = upload(trained_client, "rows.csv", csv_bytes(frame)).json()
    job = _run(
        trained_client,
        {
            "model": {"name": "iris-parameter"},
            "dataset_id": dataset["id"],
            "id_columns": ["row_id"],
            "output_format": fmt,
            "chunk_rows": 1_000,  # three chunks, the last one short
        },
    )
    assert job["status"] == "succeeded", job
    assert job["base_model"] == {"name": "iris-parameter", "version": 1}
    assert job["progress"]["rows_done"] == job["progress"]["rows_total"] == 2_345
    result_id = job["result_dataset_id"]
    assert result_id and job["metrics"]["result_dataset_id"] == result_id

    result = trained_client.get(f"/v1/datasets/{result_id}").json()
    assert result["rows"] == 2_345 and result["format"] == fmt
    assert result["origin"]["job_id"] == job["id"]
    assert result["name"].startswith("rows predictions (iris-parameter v1")
    names = [column["name"] for column in result["columns"]]
    online = _online(trained_client, frame)
    classes = online["classes"]
    assert names == ["row_id", "prediction", *[f"probability_{c}" for c in classes]]

    download = trained_client.get(f"/v1/datasets/{result_id}/content")
    assert download.status_code == 200
    assert download.headers["etag"] == f'"{result["sha256"]}"'
    assert int(download.headers["content-length"]) == result["size_bytes"] == len(download.content)
    if fmt == "csv":
        got = pd.read_csv(io.BytesIO(download.content))
    else:
        got = pd.read_json(io.BytesIO(download.content), lines=True)
    assert got["row_id"].tolist() == frame["row_id"].tolist()
    assert got["prediction"].tolist() == online["predictions"]
    probabilities = got[[f"probability_{c}" for c in classes]].to_numpy()
    np.testing.assert_allclose(probabilities, np.array(online["probabilities"]), atol=1e-6)

    # The result is a dataset like any other: a second batch prediction can read it back.
    events = trained_client.get(f"/v1/jobs/{job['id']}/events?limit=100").json()["data"]
    assert any(e["type"] == "metrics" and e["data"]["rows_done"] == 2_345 for e in events)


def test_batch_prediction_of_a_regressor_by_alias(trained_client: TestClient) -> None:
    trained_client.put("/v1/models/diabetes/aliases/production", json={"version": 1})
    diabetes = trained_client.get("/v1/datasets?limit=50").json()["data"]
    source = next(d for d in diabetes if d["name"].startswith("diabetes"))
    job = _run(
        trained_client,
        {"model": {"name": "diabetes", "alias": "production"}, "dataset_id": source["id"]},
    )
    assert job["status"] == "succeeded", job
    got = pd.read_csv(
        io.BytesIO(trained_client.get(f"/v1/datasets/{job['result_dataset_id']}/content").content)
    )
    assert got.columns.tolist() == ["prediction"] and len(got) == source["rows"]
    assert np.isfinite(got["prediction"]).all()


def test_refusals_name_what_is_wrong(trained_client: TestClient) -> None:
    frame = _iris_rows(20)
    dataset = upload(trained_client, "rows.csv", csv_bytes(frame)).json()
    post = trained_client.post
    url = "/v1/jobs/batch-prediction"
    base = {"model": {"name": "iris-parameter"}, "dataset_id": dataset["id"]}
    assert_problem(post(url, json={**base, "model": {"name": "nope"}}), 404, "model_not_found")
    assert_problem(post(url, json={**base, "dataset_id": "ds_missing"}), 404, "dataset_not_found")
    body = assert_problem(post(url, json={**base, "id_columns": ["id"]}), 422, "column_not_found")
    assert "'id'" in body["detail"] and "row_id" in body["detail"]
    clash = upload(
        trained_client, "clash.csv", csv_bytes(frame.rename(columns={"row_id": "prediction"}))
    ).json()
    assert_problem(
        post(url, json={**base, "dataset_id": clash["id"], "id_columns": ["prediction"]}),
        422,
        "invalid_id_columns",
    )
    lacking = upload(trained_client, "lacking.csv", csv_bytes(frame.iloc[:, :3])).json()
    body = assert_problem(
        post(url, json={**base, "dataset_id": lacking["id"]}), 422, "feature_mismatch"
    )
    assert "petal width (cm)" in body["detail"]
    assert_problem(post(url, json={**base, "chunk_rows": 0}), 422, "validation_error")


def test_a_bad_row_fails_the_job_and_leaves_nothing(trained_client: TestClient) -> None:
    frame = _iris_rows(3_000)
    frame.loc[2_500, "sepal width (cm)"] = None
    dataset = upload(trained_client, "holes.csv", csv_bytes(frame)).json()
    database = trained_client.app.state.database  # type: ignore[attr-defined]
    with database.read_scope() as session:
        parts_before = session.scalar(select(func.count()).select_from(DatasetPart))
    listed_before = trained_client.get("/v1/datasets?limit=100").json()["data"]
    job = _run(
        trained_client,
        {"model": {"name": "iris-parameter"}, "dataset_id": dataset["id"], "chunk_rows": 1_000},
    )
    assert job["status"] == "failed"
    assert job["error"]["code"] == "invalid_data"
    assert "row 2000" in job["error"]["message"] and "sepal width" in job["error"]["message"]
    assert job["result_dataset_id"] is None
    with database.read_scope() as session:
        assert session.scalar(select(func.count()).select_from(DatasetPart)) == parts_before
    assert trained_client.get("/v1/datasets?limit=100").json()["data"] == listed_before


def test_cancelled_before_it_runs(trained_client: TestClient) -> None:
    dataset = upload(trained_client, "rows.csv", csv_bytes(_iris_rows(50))).json()
    response = trained_client.post(
        "/v1/jobs/batch-prediction",
        json={"model": {"name": "iris-parameter"}, "dataset_id": dataset["id"]},
    )
    job_id = response.json()["id"]
    assert trained_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
    run_pending_jobs(trained_client.app.state.database)  # type: ignore[attr-defined]
    job = trained_client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["result_dataset_id"] is None


def test_jsonl_input_with_a_column_missing_from_some_records(trained_client: TestClient) -> None:
    frame = _iris_rows(30)
    lines = [json.dumps(record) for record in frame.to_dict(orient="records")]
    content = ("\n".join(lines) + "\n").encode()
    dataset = upload(trained_client, "rows.jsonl", content, "application/jsonl").json()
    job = _run(
        trained_client,
        {
            "model": {"name": "iris-parameter"},
            "dataset_id": dataset["id"],
            "id_columns": ["row_id"],
        },
    )
    assert job["status"] == "succeeded", job
    got = pd.read_csv(
        io.BytesIO(trained_client.get(f"/v1/datasets/{job['result_dataset_id']}/content").content)
    )
    assert got["row_id"].tolist() == frame["row_id"].tolist()
