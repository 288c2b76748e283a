"""The Open Inference Protocol through the ASGI app: JSON shapes, binary bodies, errors."""

import gzip
import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.services import inference
from tests.helpers import assert_problem

SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
CLASSES = ["setosa", "versicolor", "virginica"]


def matrix(rows: list[list[float]], datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [
            {
                "name": "input",
                "shape": [len(rows), len(rows[0])],
                "datatype": datatype,
                "data": rows,
            }
        ],
        **extra,
    }


def infer(client: TestClient, body: Any, path: str = "/v2/models/iris-source/infer") -> Any:
    return client.post(path, json=body)


def assert_v2_error(response: Any, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    message: str = body["error"]
    return message


def output(body: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(o for o in body["outputs"] if o["name"] == name)
    return found


class TestServer:
    def test_live_and_ready(self, client: TestClient) -> None:
        assert client.get("/v2/health/live").json() == {"live": True}
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 200 and ready.json() == {"ready": True}

    def test_not_ready_on_an_unmigrated_database(self, tmp_path: Path) -> None:
        with TestClient(create_app(Settings(data_dir=tmp_path, workers=0))) as client:
            response = client.get("/v2/health/ready")
            assert response.status_code == 503
            assert response.json()["ready"] is False
            assert "graft migrate" in response.json()["error"]
            assert client.get("/v2/health/live").status_code == 200

    def test_metadata(self, client: TestClient) -> None:
        body = client.get("/v2").json()
        assert body["name"] == "graft" and body["version"] == "0.1.0"
        assert "binary_tensor_data" in body["extensions"]


class TestModelMetadata:
    def test_numeric_classifier(self, trained_client: TestClient) -> None:
        body = trained_client.get("/v2/models/iris-source").json()
        assert body["name"] == "iris-source" and body["versions"] == ["1"]
        assert body["version"] == "1" and body["platform"] == "pytorch"
        assert body["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
        assert body["outputs"] == [
            {"name": "predictions", "datatype": "BYTES", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 3]},
        ]
        assert body["classes"] == CLASSES
        assert [f["name"] for f in body["features"]] == NAMES
        assert {f["datatype"] for f in body["features"]} == {"FP64"}
        versioned = trained_client.get("/v2/models/iris-source/versions/1").json()
        assert versioned == body

    def test_regressor_has_no_probabilities(self, trained_client: TestClient) -> None:
        body = trained_client.get("/v2/models/diabetes").json()
        assert body["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
        assert body["classes"] is None and body["task"] == "regression"

    def test_default_follows_the_production_alias(self, trained_client: TestClient) -> None:
        trained_client.put("/v1/models/iris-source/aliases/production", json={"version": 1})
        assert trained_client.get("/v2/models/iris-source").json()["version"] == "1"

    def test_unknown_model_and_version(self, trained_client: TestClient) -> None:
        assert_v2_error(trained_client.get("/v2/models/nope"), 404, "nope")
        assert_v2_error(trained_client.get("/v2/models/iris-source/versions/9"), 404, "9")
        assert_v2_error(
            trained_client.get("/v2/models/iris-source/versions/latest"),
            400,
            "path.version",
        )
        # Well formed, but past any version a model can have.
        assert_v2_error(trained_client.get("/v2/models/iris-source/versions/9999999999"), 404)

    def test_readiness(self, trained_client: TestClient) -> None:
        assert trained_client.get("/v2/models/iris-source/ready").json() == {
            "name": "iris-source",
            "version": "1",
            "ready": True,
        }
        assert trained_client.get("/v2/models/iris-source/versions/1/ready").status_code == 200
        assert_v2_error(trained_client.get("/v2/models/iris-source/versions/2/ready"), 404)
        assert_v2_error(trained_client.get("/v2/models/nope/ready"), 404)


class TestInfer:
    def test_matrix_matches_v1(self, trained_client: TestClient) -> None:
        # FP64 carries the same values as /v1's JSON numbers, so the outputs are identical.
        response = infer(trained_client, matrix([SETOSA, VIRGINICA], id="req-7"))
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        body = response.json()
        assert body["model_name"] == "iris-source" and body["model_version"] == "1"
        assert body["id"] == "req-7"
        v1 = trained_client.post(
            "/v1/models/iris-source/predict", json={"instances": [SETOSA, VIRGINICA]}
        ).json()
        predictions = output(body, "predictions")
        assert predictions == {
            "name": "predictions",
            "datatype": "BYTES",
            "shape": [2],
            "data": v1["predictions"],
        }
        probabilities = output(body, "probabilities")
        assert probabilities["shape"] == [2, 3] and probabilities["datatype"] == "FP32"
        # Both carry the same float32 values; /v1 writes them in float32's shortest form.
        np.testing.assert_array_equal(
            np.asarray(probabilities["data"], dtype=np.float32),
            np.asarray(v1["probabilities"], dtype=np.float32).ravel(),
        )

    def test_flat_data_fp64_and_int64(self, trained_client: TestClient) -> None:
        nested = infer(trained_client, matrix([SETOSA, VIRGINICA])).json()
        flat = {
            "inputs": [
                {"name": "input", "shape": [2, 4], "datatype": "FP64", "data": SETOSA + VIRGINICA}
            ]
        }
        assert infer(trained_client, flat).json()["outputs"] == nested["outputs"]
        integers = matrix([[5, 3, 1, 0]], datatype="INT64")
        as_floats = matrix([[5.0, 3.0, 1.0, 0.0]])
        assert (
            infer(trained_client, integers).json()["outputs"]
            == infer(trained_client, as_floats).json()["outputs"]
        )

    def test_one_input_per_feature(self, trained_client: TestClient) -> None:
        columns = {
            "inputs": [
                {"name": name, "shape": [2], "datatype": "FP64", "data": [a, b]}
                for name, a, b in zip(NAMES, SETOSA, VIRGINICA, strict=True)
            ]
        }
        by_column = infer(trained_client, columns).json()
        assert (
            by_column["outputs"]
            == infer(trained_client, matrix([SETOSA, VIRGINICA])).json()["outputs"]
        )

    def test_output_selection_and_order(self, trained_client: TestClient) -> None:
        body = infer(
            trained_client,
            matrix([SETOSA], outputs=[{"name": "probabilities"}, {"name": "predictions"}]),
        ).json()
        assert [o["name"] for o in body["outputs"]] == ["probabilities", "predictions"]
        only = infer(trained_client, matrix([SETOSA], outputs=[{"name": "predictions"}])).json()
        assert [o["name"] for o in only["outputs"]] == ["predictions"]
        assert "id" not in only

    def test_regression(self, trained_client: TestClient) -> None:
        width = len(trained_client.get("/v2/models/diabetes").json()["features"])
        body = infer(
            trained_client, matrix([[0.0] * width]), "/v2/models/diabetes/versions/1/infer"
        ).json()
        v1 = trained_client.post(
            "/v1/models/diabetes/predict", json={"instances": [[0.0] * width]}
        ).json()
        assert body["outputs"] == [
            {"name": "predictions", "datatype": "FP64", "shape": [1], "data": v1["predictions"]}
        ]

    def test_binary_request_and_response(self, trained_client: TestClient) -> None:
        tensor = np.asarray([SETOSA, VIRGINICA], dtype=np.float32)
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 4],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": tensor.nbytes},
                    }
                ],
                "parameters": {"binary_data_output": True},
            }
        ).encode()
        response = trained_client.post(
            "/v2/models/iris-source/infer",
            content=header + tensor.tobytes(),
            headers={"Inference-Header-Content-Length": str(len(header))},
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/octet-stream"
        length = int(response.headers["inference-header-content-length"])
        described = json.loads(response.content[:length])
        data = response.content[length:]
        sizes = [o["parameters"]["binary_data_size"] for o in described["outputs"]]
        assert sum(sizes) == len(data)
        labels, probabilities = data[: sizes[0]], data[sizes[0] :]
        decoded = []
        offset = 0
        while offset < len(labels):
            (size,) = struct.unpack_from("<I", labels, offset)
            decoded.append(labels[offset + 4 : offset + 4 + size].decode())
            offset += 4 + size
        json_body = infer(trained_client, matrix([SETOSA, VIRGINICA], "FP32")).json()
        assert decoded == output(json_body, "predictions")["data"]
        np.testing.assert_array_equal(
            np.frombuffer(probabilities, dtype="<f4"),
            np.asarray(output(json_body, "probabilities")["data"], dtype=np.float32),
        )

    def test_gzip_body(self, trained_client: TestClient) -> None:
        raw = json.dumps(matrix([SETOSA])).encode()
        response = trained_client.post(
            "/v2/models/iris-source/infer",
            content=gzip.compress(raw),
            headers={"Content-Encoding": "gzip"},
        )
        assert response.status_code == 200, response.text
        assert output(response.json(), "predictions")["data"] == ["setosa"]


class TestInferErrors:
    def test_inflated_body_over_the_limit_is_413(self, settings: Settings) -> None:
        small = settings.model_copy(update={"max_request_bytes": 200})
        with TestClient(create_app(small)) as client:
            raw = json.dumps(matrix([[0.0, 0.0, 0.0, 0.0]] * 50)).encode()
            packed = gzip.compress(raw)
            assert len(packed) < 200 < len(raw)
            response = client.post(
                "/v2/models/iris-source/infer",
                content=packed,
                headers={"Content-Encoding": "gzip"},
            )
            assert_v2_error(response, 413, "200 bytes")
            unknown = client.post(
                "/v2/models/iris-source/infer", content=b"{}", headers={"Content-Encoding": "br"}
            )
            assert_v2_error(unknown, 400, "br")

    def test_wrong_width(self, trained_client: TestClient) -> None:
        assert_v2_error(
            infer(trained_client, matrix([[1.0, 2.0, 3.0]])), 400, "[1, 3]", "expected [N, 4]"
        )

    def test_shape_and_data_disagree(self, trained_client: TestClient) -> None:
        body = matrix([SETOSA])
        body["inputs"][0]["shape"] = [2, 4]
        assert_v2_error(infer(trained_client, body), 400, "8 values", "holds 4")

    def test_ragged_data(self, trained_client: TestClient) -> None:
        body = matrix([SETOSA])
        body["inputs"][0]["data"] = [SETOSA, [1.0]]
        assert_v2_error(infer(trained_client, body), 400, "rectangular")

    @pytest.mark.parametrize(
        ("datatype", "value", "fragment"),
        [
            ("FP32", "wide", "expected numbers"),
            ("INT64", 1.5, "expected integers"),
            ("FP32", None, "expected numbers"),
            ("INT8", 300, "out of range"),
        ],
    )
    def test_values_of_the_wrong_type(
        self, trained_client: TestClient, datatype: str, value: Any, fragment: str
    ) -> None:
        row: list[Any] = [5, 3, 1, value]
        assert_v2_error(infer(trained_client, matrix([row], datatype=datatype)), 400, fragment)

    def test_non_finite_value(self, trained_client: TestClient) -> None:
        response = trained_client.post(
            "/v2/models/iris-source/infer",
            content=b'{"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP64", '
            b'"data": [5.1, NaN, 1.4, 0.2]}]}',
        )
        assert_v2_error(response, 400, "finite")

    def test_bytes_for_a_numeric_model(self, trained_client: TestClient) -> None:
        body = {
            "inputs": [{"name": "input", "shape": [1, 4], "datatype": "BYTES", "data": ["a"] * 4}]
        }
        assert_v2_error(infer(trained_client, body), 400, "numeric")
        column = {
            "inputs": [
                {"name": name, "shape": [1], "datatype": "BYTES", "data": ["1"]} for name in NAMES
            ]
        }
        assert_v2_error(infer(trained_client, column), 400, "is BYTES but the feature is numeric")

    def test_missing_and_unknown_inputs(self, trained_client: TestClient) -> None:
        body = {
            "inputs": [
                {"name": name, "shape": [1], "datatype": "FP32", "data": [1.0]}
                for name in [*NAMES[:3], "colour"]
            ]
        }
        assert_v2_error(infer(trained_client, body), 400, "petal width (cm)", "colour")
        other = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": SETOSA}]}
        assert_v2_error(infer(trained_client, other), 400, "expected one input 'input'")

    def test_columns_of_different_lengths(self, trained_client: TestClient) -> None:
        body = {
            "inputs": [
                {"name": name, "shape": [len(values)], "datatype": "FP32", "data": values}
                for name, values in zip(NAMES, [[1.0], [1.0, 2.0], [1.0], [1.0]], strict=True)
            ]
        }
        assert_v2_error(infer(trained_client, body), 400, "different numbers of rows")

    def test_no_rows(self, trained_client: TestClient) -> None:
        body = {"inputs": [{"name": "input", "shape": [0, 4], "datatype": "FP32", "data": []}]}
        assert_v2_error(infer(trained_client, body), 400, "no rows")

    def test_unknown_output_and_classification(self, trained_client: TestClient) -> None:
        assert_v2_error(
            infer(trained_client, matrix([SETOSA], outputs=[{"name": "logits"}])), 400, "logits"
        )
        asked = matrix(
            [SETOSA], outputs=[{"name": "predictions", "parameters": {"classification": 2}}]
        )
        assert_v2_error(infer(trained_client, asked), 400, "classification")
        regression = matrix([[0.0] * 10], outputs=[{"name": "probabilities"}])
        assert_v2_error(infer(trained_client, regression, "/v2/models/diabetes/infer"), 400)

    def test_malformed_documents(self, trained_client: TestClient) -> None:
        post = trained_client.post
        path = "/v2/models/iris-source/infer"
        assert_v2_error(post(path, content=b"{not json"), 400, "not valid JSON")
        assert_v2_error(post(path, json={"inputs": []}), 400, "inputs")
        assert_v2_error(post(path, json={"inputs": [{"name": "input"}]}), 400, "shape")
        body = matrix([SETOSA])
        body["inputs"][0]["datatype"] = "FP8"
        assert_v2_error(infer(trained_client, body), 400, "datatype")
        body = matrix([SETOSA])
        body["inputs"][0]["shape"] = [-1, 4]
        assert_v2_error(infer(trained_client, body), 400, "shape")
        duplicated = matrix([SETOSA])
        duplicated["inputs"] *= 2
        assert_v2_error(infer(trained_client, duplicated), 400, "more than once")

    def test_binary_framing_errors(self, trained_client: TestClient) -> None:
        header = json.dumps(
            {
                "inputs": [
                    {
                        "name": "input",
                        "shape": [1, 4],
                        "datatype": "FP32",
                        "parameters": {"binary_data_size": 16},
                    }
                ]
            }
        ).encode()
        tensor = np.asarray([SETOSA], dtype=np.float32).tobytes()

        def post(content: bytes, length: str) -> Any:
            return trained_client.post(
                "/v2/models/iris-source/infer",
                content=content,
                headers={"Inference-Header-Content-Length": length},
            )

        assert post(header + tensor, str(len(header))).status_code == 200
        assert_v2_error(post(header + tensor[:12], str(len(header))), 400, "only 12 remain")
        assert_v2_error(post(header + tensor + b"xx", str(len(header))), 400, "2 bytes")
        assert_v2_error(post(header + tensor, "9999"), 400, "9999")
        assert_v2_error(post(header + tensor, "ten"), 400, "integer")

    def test_a_crash_is_500_in_the_protocol_form(
        self, trained_client: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def crash(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("boom")

        monkeypatch.setattr(inference, "predict_rows", crash)
        message = assert_v2_error(infer(trained_client, matrix([SETOSA])), 500, "logged")
        assert "boom" not in message

    def test_unknown_model_version_and_route(self, trained_client: TestClient) -> None:
        assert_v2_error(infer(trained_client, matrix([SETOSA]), "/v2/models/nope/infer"), 404)
        assert_v2_error(
            infer(trained_client, matrix([SETOSA]), "/v2/models/iris-source/versions/5/infer"),
            404,
            "no version 5",
        )
        assert_v2_error(trained_client.get("/v2/nothing"), 404, "/v2/nothing")
        assert_v2_error(trained_client.get("/v2/models/iris-source/infer"), 405)
        # Everything outside /v2 keeps its problem+json errors.
        assert_problem(trained_client.get("/v1/nothing"), 404, "not_found")
        assert_problem(trained_client.get("/v2x"), 404, "not_found")
