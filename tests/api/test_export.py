"""Export: a version as one ONNX or TorchScript file, preprocessing folded in, giving what
`predict` gives for the same raw rows (1e-5 on probabilities and regression values)."""

import io
import json
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import torch
from fastapi.testclient import TestClient
from sklearn.datasets import load_digits

from app.db.session import Database
from tests.helpers import (
    FAST,
    assert_problem,
    builtin,
    csv_bytes,
    run_pending_jobs,
    train_source,
    upload,
)

TOLERANCE = 1e-5
ROWS = 1000


def exported(client: TestClient, path: str, fmt: str = "onnx") -> bytes:
    response = client.get(f"{path}/export", params={"format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["etag"].strip('"')
    suffix = "onnx" if fmt == "onnx" else "pt"
    assert response.headers["content-disposition"].endswith(f'.{suffix}"')
    return response.content


def predicted(client: TestClient, model: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(f"/v1/models/{model}/predict", json=body)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def graft_signature(content: bytes) -> dict[str, Any]:
    props = {p.key: p.value for p in onnx.load_from_string(content).metadata_props}
    signature: dict[str, Any] = json.loads(props["graft.signature"])
    return signature


def iris_like_rows(seed: int) -> np.ndarray:
    """Raw rows around Iris's ranges, including some far outside them."""
    rng = np.random.default_rng(seed)
    low, high = np.array([4.0, 2.0, 1.0, 0.1]), np.array([8.0, 4.5, 7.0, 2.5])
    rows = rng.uniform(low, high, size=(ROWS, 4))
    rows[:10] *= 3
    return rows.astype(np.float32)


def test_mlp_classifier_onnx_and_torchscript_match_predict(trained_client: TestClient) -> None:
    client = trained_client
    rows = iris_like_rows(0)
    answer = predicted(client, "iris-parameter", {"instances": rows.tolist()})
    expected = np.array(answer["probabilities"], dtype=np.float32)

    content = exported(client, "/v1/models/iris-parameter/versions/1")
    session = ort.InferenceSession(content)
    probabilities, labels = session.run(None, {"features": rows})
    assert np.abs(probabilities - expected).max() <= TOLERANCE
    assert list(labels) == [str(p) for p in answer["predictions"]]
    signature = graft_signature(content)
    assert signature["model"] == "iris-parameter" and signature["version"] == 1
    assert signature["inputs"][0]["columns"] == [
        "sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"
    ]  # fmt: skip
    assert signature["classes"] == [str(c) for c in answer["classes"]]
    assert [o["name"] for o in signature["outputs"]] == ["probabilities", "label"]

    archive = exported(client, "/v1/models/iris-parameter/versions/1", "torchscript")
    files = {"graft.json": ""}
    module = torch.jit.load(io.BytesIO(archive), _extra_files=files)
    assert json.loads(files["graft.json"])["classes"] == signature["classes"]
    with torch.no_grad():
        scripted = module(torch.from_numpy(rows), {}).numpy()
    assert np.abs(scripted - expected).max() <= TOLERANCE


def test_regression_gives_values_on_the_target_scale(trained_client: TestClient) -> None:
    client = trained_client
    version = client.get("/v1/models/diabetes/versions/1").json()
    names = [column["name"] for column in version["signature"]["inputs"]]
    rng = np.random.default_rng(1)
    rows = rng.normal(0, 0.05, size=(ROWS, len(names))).astype(np.float32)
    answer = predicted(client, "diabetes", {"instances": rows.tolist()})
    expected = np.array(answer["predictions"], dtype=np.float64)
    session = ort.InferenceSession(exported(client, "/v1/models/diabetes/versions/1"))
    (values,) = session.run(None, {"features": rows})
    assert values.shape == (ROWS,)
    # float32 arithmetic on values of a few hundred: compare relative to their size.
    assert np.abs(values - expected).max() <= TOLERANCE * np.abs(expected).max()
    archive = exported(client, "/v1/models/diabetes/versions/1", "torchscript")
    with torch.no_grad():
        scripted = torch.jit.load(io.BytesIO(archive))(torch.from_numpy(rows), None).numpy()
    assert np.abs(scripted - expected).max() <= TOLERANCE * np.abs(expected).max()


def test_categorical_columns_are_encoded_inside_the_file(
    client: TestClient, database: Database
) -> None:
    rng = np.random.default_rng(2)
    frame = pd.DataFrame(
        {
            "size": rng.normal(10, 3, 300),
            "colour": rng.choice(["red", "green", "blue"], 300),
            "weight": rng.normal(50, 10, 300),
            "shape": rng.choice(["round", "square"], 300),
        }
    )
    frame["label"] = np.where((frame["colour"] == "red") ^ (frame["size"] > 10), "yes", "no")
    dataset = upload(client, "mixed.csv", csv_bytes(frame)).json()
    train_source(client, database, dataset["id"], "mixed", target_column="label")
    raw = pd.DataFrame(
        {
            "size": rng.normal(10, 5, ROWS),
            # "purple" was never seen: an all-zero block, as in Graft.
            "colour": rng.choice(["red", "green", "blue", "purple"], ROWS),
            "weight": rng.normal(50, 20, ROWS),
            "shape": rng.choice(["round", "square"], ROWS),
        }
    )
    answer = predicted(client, "mixed", {"records": raw.to_dict(orient="records")})
    expected = np.array(answer["probabilities"], dtype=np.float32)

    content = exported(client, "/v1/models/mixed/versions/1")
    signature = graft_signature(content)
    assert [i["name"] for i in signature["inputs"]] == ["features", "colour", "shape"]
    assert signature["inputs"][0]["columns"] == ["size", "weight"]
    session = ort.InferenceSession(content)
    feeds = {
        "features": raw[["size", "weight"]].to_numpy(np.float32),
        "colour": raw["colour"].to_numpy(object),
        "shape": raw["shape"].to_numpy(object),
    }
    probabilities, labels = session.run(None, feeds)
    assert np.abs(probabilities - expected).max() <= TOLERANCE
    assert list(labels) == answer["predictions"]

    archive = exported(client, "/v1/models/mixed/versions/1", "torchscript")
    module = torch.jit.load(io.BytesIO(archive))
    with torch.no_grad():
        scripted = module(
            torch.from_numpy(feeds["features"].copy()),
            {"colour": list(raw["colour"]), "shape": list(raw["shape"])},
        ).numpy()
    assert np.abs(scripted - expected).max() <= TOLERANCE


def test_cnn_takes_raw_images(client: TestClient, database: Database) -> None:
    source = builtin(client, "digits", as_images=True)
    response = client.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": source["id"],
            "target_column": "y",
            "model_name": "digits",
            "architecture": {
                "type": "cnn",
                "channels": [4],
                "kernel_size": 3,
                "hidden_layers": [8],
            },
            "hyperparameters": {**FAST, "epochs": 2, "batch_size": 64},
        },
    )
    assert response.status_code == 202, response.text
    run_pending_jobs(database)
    digits = load_digits().images.astype(np.float32)
    rng = np.random.default_rng(3)
    rows = digits[rng.integers(0, len(digits), ROWS)][:, None, :, :]
    answer = predicted(client, "digits", {"instances": rows.tolist()})
    expected = np.array(answer["probabilities"], dtype=np.float32)
    content = exported(client, "/v1/models/digits/versions/1")
    assert graft_signature(content)["inputs"] == [
        {"name": "images", "dtype": "float32", "shape": ["N", 1, 8, 8]}
    ]
    probabilities, labels = ort.InferenceSession(content).run(None, {"images": rows})
    assert np.abs(probabilities - expected).max() <= TOLERANCE
    assert list(labels) == [str(p) for p in answer["predictions"]]
    archive = exported(client, "/v1/models/digits/versions/1", "torchscript")
    with torch.no_grad():
        scripted = torch.jit.load(io.BytesIO(archive))(torch.from_numpy(rows), None).numpy()
    assert np.abs(scripted - expected).max() <= TOLERANCE


def test_unknown_versions_and_formats(trained_client: TestClient) -> None:
    assert_problem(
        trained_client.get("/v1/models/iris-source/versions/9/export"), 404, "version_not_found"
    )
    assert_problem(
        trained_client.get("/v1/models/iris-source/versions/1/export?format=pickle"),
        422,
        "validation_error",
    )
