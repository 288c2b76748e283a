"""Fine-tuning behaviour seen through the API: categorical inputs, new classes, failures."""

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.db.session import Database
from app.ml import tabular
from tests.helpers import FAST, assert_problem, builtin, csv_bytes, run_pending_jobs, upload

# Also run on PostgreSQL when GRAFT_TEST_DATABASE_URL is set.
pytestmark = pytest.mark.postgres


def shop_frame(rows: int, labels: list[str], seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue"], size=rows)
    size = rng.normal(size=rows)
    label = np.where(colour == "red", labels[0], labels[1 % len(labels)])
    if len(labels) > 2:
        label = np.where(size > 1.0, labels[2], label)
    return pd.DataFrame({"colour": colour, "size": size, "label": label})


def train(
    client: TestClient, database: Database, dataset_id: str, name: str, target: str = "label"
) -> dict:
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": dataset_id,
            "target_column": target,
            "model_name": name,
            "architecture": {"hidden_layers": [16]},
            "hyperparameters": FAST,
        },
    )
    assert response.status_code == 202, response.text
    run_pending_jobs(database)
    job: dict = client.get(f"/v1/jobs/{response.json()['id']}").json()
    return job


class TestCategoricalInputs:
    def test_text_features_and_labels_round_trip(
        self, client: TestClient, database: Database
    ) -> None:
        dataset = upload(client, "shop.csv", csv_bytes(shop_frame(200, ["yes", "no"], 0))).json()
        job = train(client, database, dataset["id"], "shop")
        assert job["status"] == "succeeded", job
        version = client.get("/v1/models/shop/versions/1").json()
        assert version["signature"]["inputs"] == [
            {"name": "colour", "dtype": "string"},
            {"name": "size", "dtype": "float64"},
        ]
        colour = version["preprocessing"]["features"]["columns"][0]
        assert colour == {
            "name": "colour",
            "kind": "categorical",
            "categories": ["blue", "green", "red"],
        }
        assert version["signature"]["classes"] == ["no", "yes"]
        body = client.post(
            "/v1/models/shop/predict",
            json={"records": [{"colour": "red", "size": 0.1}, {"colour": "blue", "size": 0.1}]},
        ).json()
        assert body["predictions"] == ["yes", "no"]


class TestNewClasses:
    def test_head_is_replaced_when_the_target_brings_new_classes(
        self, client: TestClient, database: Database
    ) -> None:
        source = upload(client, "s.csv", csv_bytes(shop_frame(200, ["yes", "no"], 1))).json()
        target = upload(
            client, "t.csv", csv_bytes(shop_frame(60, ["yes", "no", "maybe"], 2))
        ).json()
        train(client, database, source["id"], "shop")
        response = client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "shop"},
                "dataset_id": target["id"],
                "target_column": "label",
                "model_name": "shop-3",
                "strategy": "parameter",
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
        job = client.get(f"/v1/jobs/{response.json()['id']}").json()
        assert job["status"] == "succeeded", job
        version = client.get("/v1/models/shop-3/versions/1").json()
        assert version["signature"]["classes"] == ["no", "yes", "maybe"]
        assert version["architecture"]["output_dim"] == 3
        events = client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 200}).json()
        assert any(
            "head replaced" in e["message"] and "maybe" in e["message"] for e in events["data"]
        )
        probabilities = client.post(
            "/v1/models/shop-3/predict", json={"records": [{"colour": "red", "size": 3.0}]}
        ).json()["probabilities"][0]
        assert len(probabilities) == 3


class TestUnexpectedFailure:
    def test_a_crash_inside_training_fails_the_job_cleanly(
        self, client: TestClient, database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def explode(*_args: object, **_kwargs: object) -> None:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(tabular, "fit_features", explode)
        job = train(client, database, builtin(client, "iris")["id"], "m", target="target")
        assert job["status"] == "failed"
        assert job["error"]["code"] == "internal_error"
        # The exception's own text may hold paths or data: it goes to the log, not the job.
        message = job["error"]["message"]
        assert "internal error (RuntimeError)" in message and job["id"] in message
        assert "disk on fire" not in message and "Traceback" not in message
        assert client.get("/v1/models").json()["data"] == []


class TestNumbersOutOfRange:
    @pytest.mark.parametrize(
        "path",
        [
            "/v1/models/m/versions/99999999999999999999",
            "/v1/models/m/versions?after=99999999999999999999",
            "/v1/jobs/job_x/events?after=99999999999999999999",
        ],
    )
    def test_huge_integers_are_422_not_500(self, client: TestClient, path: str) -> None:
        assert_problem(client.get(path), 422, "validation_error")

    def test_huge_predict_version(self, client: TestClient) -> None:
        response = client.post(
            "/v1/models/m/predict?version=99999999999999999999", json={"instances": [[1.0]]}
        )
        assert_problem(response, 422, "validation_error")
