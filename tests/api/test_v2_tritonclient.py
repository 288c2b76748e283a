"""The Open Inference Protocol spoken by Triton's own HTTP client to a real uvicorn server."""

import json
import shutil
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from tests.helpers import FAST, csv_bytes, run_pending_jobs, upload

httpclient = pytest.importorskip("tritonclient.http")
InferenceServerException = pytest.importorskip("tritonclient.utils").InferenceServerException

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def add_string_feature_model(settings: Settings) -> None:
    """A classifier over a text column and a number, trained with the tests' tiny settings."""
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], size=60)
    size = rng.normal(size=60)
    label = np.where(colour == "red", "stop", "go")
    frame = pd.DataFrame({"colour": colour, "size": size, "label": label})
    database = Database(settings.resolved_database_url)
    with TestClient(create_app(settings)) as client:
        dataset = upload(client, "shop.csv", csv_bytes(frame)).json()
        response = client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": dataset["id"],
                "target_column": "label",
                "model_name": "shop",
                "architecture": {"hidden_layers": [8]},
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202, response.text
        run_pending_jobs(database)
    database.dispose()


@pytest.fixture(scope="module")
def server_url(tmp_path_factory: pytest.TempPathFactory, trained_template: Path) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("v2-server")
    shutil.copy(trained_template, data_dir / "graft.db")
    settings = Settings(data_dir=data_dir, workers=0)
    add_string_feature_model(settings)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def triton(server_url: str) -> Iterator[Any]:
    client = httpclient.InferenceServerClient(url=server_url)
    yield client
    client.close()


def v1_predict(server_url: str, name: str, instances: list[list[Any]]) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://{server_url}/v1/models/{name}/predict",
        data=json.dumps({"instances": instances}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request) as response:
        body: dict[str, Any] = json.load(response)
        return body


def matrix_input(rows: list[list[Any]], datatype: str, dtype: Any, binary: bool) -> Any:
    tensor = httpclient.InferInput("input", [len(rows), len(rows[0])], datatype)
    tensor.set_data_from_numpy(np.asarray(rows, dtype=dtype), binary_data=binary)
    return tensor


class TestHealthAndMetadata:
    def test_server(self, triton: Any) -> None:
        assert triton.is_server_live()
        assert triton.is_server_ready()
        metadata = triton.get_server_metadata()
        assert metadata["name"] == "graft"
        assert "binary_tensor_data" in metadata["extensions"]

    def test_model(self, triton: Any) -> None:
        assert triton.is_model_ready("iris-source")
        assert triton.is_model_ready("iris-source", "1")
        assert not triton.is_model_ready("iris-source", "2")
        assert not triton.is_model_ready("nope")
        metadata = triton.get_model_metadata("iris-source", "1")
        assert metadata["versions"] == ["1"]
        assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert [o["name"] for o in metadata["outputs"]] == ["predictions", "probabilities"]

    def test_string_features_are_listed_one_per_column(self, triton: Any) -> None:
        metadata = triton.get_model_metadata("shop")
        assert metadata["inputs"] == [
            {"name": "colour", "datatype": "BYTES", "shape": [-1]},
            {"name": "size", "datatype": "FP64", "shape": [-1]},
        ]


class TestInfer:
    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_fp32_round_trip(self, triton: Any, server_url: str, binary: bool) -> None:
        rows = [SETOSA, VIRGINICA]
        outputs = [
            httpclient.InferRequestedOutput("predictions", binary_data=binary),
            httpclient.InferRequestedOutput("probabilities", binary_data=binary),
        ]
        result = triton.infer(
            "iris-source",
            [matrix_input(rows, "FP32", np.float32, binary)],
            outputs=outputs,
            request_id="r1",
        )
        assert result.get_response()["id"] == "r1"
        assert result.get_response()["model_version"] == "1"
        labels = [
            label.decode() if isinstance(label, bytes) else label
            for label in result.as_numpy("predictions").tolist()
        ]
        expected = v1_predict(server_url, "iris-source", rows)
        assert labels == expected["predictions"]
        probabilities = result.as_numpy("probabilities")
        assert probabilities.dtype == np.float32 and probabilities.shape == (2, 3)
        # FP32 inputs round the JSON numbers /v1 reads as float64: equal to a few ulps.
        np.testing.assert_allclose(probabilities, expected["probabilities"], atol=1e-6)

    def test_fp64_default_outputs_are_binary(self, triton: Any, server_url: str) -> None:
        rows = [VIRGINICA]
        result = triton.infer("iris-source", [matrix_input(rows, "FP64", np.float64, True)])
        outputs = {o["name"]: o for o in result.get_response()["outputs"]}
        assert "binary_data_size" in outputs["probabilities"]["parameters"]
        expected = v1_predict(server_url, "iris-source", rows)
        assert result.as_numpy("predictions").tolist() == [
            p.encode() for p in expected["predictions"]
        ]
        np.testing.assert_array_equal(
            result.as_numpy("probabilities"), np.asarray(expected["probabilities"], np.float32)
        )

    def test_int64(self, triton: Any, server_url: str) -> None:
        rows = [[5, 3, 1, 0], [7, 3, 5, 2]]
        result = triton.infer(
            "iris-source",
            [matrix_input(rows, "INT64", np.int64, True)],
            outputs=[httpclient.InferRequestedOutput("predictions")],
        )
        labels = [label.decode() for label in result.as_numpy("predictions").tolist()]
        assert labels == v1_predict(server_url, "iris-source", rows)["predictions"]
        assert result.as_numpy("probabilities") is None

    @pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
    def test_bytes_feature(self, triton: Any, server_url: str, binary: bool) -> None:
        colour = httpclient.InferInput("colour", [3], "BYTES")
        colour.set_data_from_numpy(
            np.asarray([b"red", b"green", b"blue"], dtype=np.object_), binary_data=binary
        )
        size = httpclient.InferInput("size", [3], "FP64")
        size.set_data_from_numpy(np.asarray([0.1, -0.3, 1.2]), binary_data=binary)
        result = triton.infer("shop", [colour, size])
        labels = [label.decode() for label in result.as_numpy("predictions").tolist()]
        expected = v1_predict(server_url, "shop", [["red", 0.1], ["green", -0.3], ["blue", 1.2]])
        assert labels == expected["predictions"]
        np.testing.assert_array_equal(
            result.as_numpy("probabilities"), np.asarray(expected["probabilities"], np.float32)
        )

    def test_regression_fp64(self, triton: Any, server_url: str) -> None:
        width = len(triton.get_model_metadata("diabetes")["features"])
        rows = [[0.0] * width, [0.05] * width]
        result = triton.infer("diabetes", [matrix_input(rows, "FP32", np.float32, True)])
        predictions = result.as_numpy("predictions")
        assert predictions.dtype == np.float64 and predictions.shape == (2,)
        expected = v1_predict(server_url, "diabetes", rows)["predictions"]
        np.testing.assert_allclose(predictions, expected, rtol=1e-5)


class TestErrors:
    def test_wrong_shape_is_400_with_the_reason(self, triton: Any) -> None:
        with pytest.raises(InferenceServerException) as caught:
            triton.infer("iris-source", [matrix_input([[1.0, 2.0]], "FP32", np.float32, True)])
        assert caught.value.status() == "400"
        assert "expected [N, 4]" in caught.value.message()

    def test_unknown_model_and_version_are_404(self, triton: Any) -> None:
        rows = [SETOSA]
        for name, version in [("nope", ""), ("iris-source", "7")]:
            with pytest.raises(InferenceServerException) as caught:
                triton.infer(name, [matrix_input(rows, "FP32", np.float32, True)], version)
            assert caught.value.status() == "404"
        with pytest.raises(InferenceServerException) as caught:
            triton.get_model_metadata("nope")
        assert caught.value.status() == "404" and "nope" in caught.value.message()

    def test_bytes_where_a_number_is_expected(self, triton: Any) -> None:
        colour = httpclient.InferInput("colour", [1], "BYTES")
        colour.set_data_from_numpy(np.asarray([b"red"], dtype=np.object_))
        size = httpclient.InferInput("size", [1], "BYTES")
        size.set_data_from_numpy(np.asarray([b"big"], dtype=np.object_))
        with pytest.raises(InferenceServerException) as caught:
            triton.infer("shop", [colour, size])
        assert caught.value.status() == "400" and "numeric" in caught.value.message()
