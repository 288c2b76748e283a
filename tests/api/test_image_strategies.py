"""Issue 5's strategies, auto and the transfer report on image data with a CNN."""

import io
from typing import Any

import numpy as np
from fastapi.testclient import TestClient

from app.db.session import Database
from tests.api.test_images import NPZ, digits, digits_npz
from tests.helpers import run_pending_jobs, upload

CNN_BN = {
    "type": "cnn",
    "channels": [4],
    "kernel_size": 3,
    "hidden_layers": [16],
    "batch_norm": True,
}
QUICK = {"epochs": 3, "learning_rate": 0.01, "batch_size": 32, "seed": 0}
QUICK_CV = {**QUICK, "cv_folds": 2, "cv_repeats": 1}


def setup_digits(client: TestClient, database: Database) -> str:
    source = upload(client, "low.npz", digits_npz(0, 5, 0, 200), NPZ).json()["id"]
    # The target: digits 5-9 from a dimmer "scanner".
    images, labels = digits(5, 10, 0, 40)
    buffer = io.BytesIO()
    np.savez(buffer, X=(images * 0.5 + 3).astype(np.float32), y=labels)
    target = upload(client, "high.npz", buffer.getvalue(), NPZ).json()["id"]
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": source,
            "target_column": "y",
            "model_name": "digits-source",
            "architecture": CNN_BN,
            "hyperparameters": QUICK,
        },
    )
    assert response.status_code == 202, response.text
    run_pending_jobs(database)
    return str(target)


def fine_tune(client: TestClient, target: str, name: str, **extra: Any) -> str:
    response = client.post(
        "/v1/jobs/fine-tuning",
        json={
            "base_model": {"name": "digits-source"},
            "dataset_id": target,
            "target_column": "y",
            "model_name": name,
            "hyperparameters": QUICK_CV,
            **extra,
        },
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_auto_on_images_scores_every_strategy_and_serves_its_pick(
    client: TestClient, database: Database
) -> None:
    target = setup_digits(client, database)
    job_id = fine_tune(client, target, "auto", strategy="auto", target_normalization="auto")
    run_pending_jobs(database)
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "succeeded", job
    version = client.get("/v1/models/auto/versions/1").json()
    names = {c["candidate"] for c in version["metrics"]["selection"]["candidates"]}
    assert {"lp_ft/target", "l2_sp/source", "joint/target", "scratch/target"} <= names
    shift = version["transfer_report"]["domain_shift"]
    # Half the contrast plus a brighter background: channel 0 moved, and the domains separate.
    assert list(shift["standardised_mean_difference"]) == ["channel_0"]
    assert shift["classifier_auc"] > 0.9
    images, _ = digits(5, 10, 40, 42)
    response = client.post(
        "/v1/models/auto/predict", json={"instances": (images * 0.5 + 3).tolist()}
    )
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 2


def test_target_normalization_refits_image_scaling_and_batch_norm(
    client: TestClient, database: Database
) -> None:
    target = setup_digits(client, database)
    job_id = fine_tune(client, target, "refit", strategy="l2_sp", target_normalization="target")
    run_pending_jobs(database)
    version = client.get("/v1/models/refit/versions/1").json()
    images, _ = digits(5, 10, 0, 40)
    scaling = version["preprocessing"]["features"]
    assert scaling["kind"] == "image"
    assert abs(scaling["mean"][0] - float((images * 0.5 + 3).mean())) < 1e-3
    logs = [e["message"] for e in client.get(f"/v1/jobs/{job_id}/events?limit=200").json()["data"]]
    assert any("batch-norm statistics of 1 layer(s) refitted" in m for m in logs)


def test_a_linear_model_on_images_is_served(client: TestClient, database: Database) -> None:
    target = setup_digits(client, database)
    fine_tune(client, target, "lin", strategy="linear", target_normalization="target")
    run_pending_jobs(database)
    version = client.get("/v1/models/lin/versions/1").json()
    assert version["strategy"] == "linear" and version["architecture"]["hidden_layers"] == []
    images, labels = digits(5, 10, 0, 40)
    response = client.post(
        "/v1/models/lin/predict", json={"instances": (images * 0.5 + 3).tolist()}
    )
    assert response.status_code == 200, response.text
    # A logistic regression on 32 training rows of 64 pixels fits them all.
    predictions = np.asarray(response.json()["predictions"])
    assert (predictions == labels).mean() > 0.8
