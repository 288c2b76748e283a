"""One client cannot stall everyone, and malformed input is always a 4xx.

Rows per prediction request (GRAFT_MAX_PREDICT_ROWS, /v1 and /v2), large bodies parsed and
answered off the event loop, JSON nested too deeply on every JSON route, /v2 tensor shapes,
and open event streams per API key and per process (GRAFT_MAX_STREAMS_PER_KEY,
GRAFT_MAX_STREAMS).
"""

import asyncio
import gc
import json
import shutil
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
import orjson
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.api.routes import predictions as predict_routes
from app.api.routes.predictions import OFF_LOOP_BODY_BYTES, _encode, _encode_in_steps
from app.api.v2.tensors import OutputTensor, encode_response
from app.config import Settings
from app.db.session import Database
from app.errors import TooLarge
from app.main import create_app
from app.schemas.predictions import parse_large_predict_body, parse_predict_body
from app.services.job_streams import JobEventHub
from app.services.predictions import Prediction, PredictionService, ResolvedVersion
from tests.helpers import FAST, assert_problem

NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
PREDICT = "/v1/models/iris-source/predict"
INFER = "/v2/models/iris-source/infer"
LIMIT = 300
ROWS = np.round(np.random.default_rng(11).normal(size=(20_000, 4)) * 2 + 4, 3).tolist()


def records(rows: list[list[float]]) -> list[dict[str, float]]:
    return [dict(zip(NAMES, row, strict=True)) for row in rows]


def post(client: TestClient, path: str, body: bytes, **headers: str) -> Any:
    return client.post(path, content=body, headers={"Content-Type": "application/json", **headers})


def assert_v2_error(response: Any, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["error"], body
    for fragment in fragments:
        assert fragment in body["error"], body["error"]
    message: str = body["error"]
    return message


def trained_app(tmp_path: Path, trained_template: Path, **settings: Any) -> FastAPI:
    data_dir = tmp_path / "bounded"
    data_dir.mkdir()
    shutil.copy(trained_template, data_dir / "graft.db")
    return create_app(Settings(data_dir=data_dir, workers=0, **settings))


@pytest.fixture
def bounded(tmp_path: Path, trained_template: Path) -> Iterator[TestClient]:
    """The trained Iris models behind a limit of LIMIT rows per request."""
    app = trained_app(tmp_path, trained_template, max_predict_rows=LIMIT)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


# -- rows per request ---------------------------------------------------------------------


class TestRowLimit:
    def assert_too_many(self, response: Any, rows: int) -> None:
        problem = assert_problem(response, 413, "too_many_rows")
        for fragment in (str(rows), str(LIMIT), "GRAFT_MAX_PREDICT_ROWS"):
            assert fragment in problem["detail"], problem["detail"]

    def test_the_bulk_path_counts_before_it_copies(
        self, bounded: TestClient, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def general(*args: object) -> object:
            raise AssertionError("a bulk body of numbers should not reach the general parser")

        monkeypatch.setattr(predict_routes, "parse_predict_body", general)
        body = orjson.dumps({"instances": ROWS[: LIMIT + 1]})
        assert len(body) > 4096  # the bulk parse's threshold (app/serving/dense.py)
        self.assert_too_many(post(bounded, PREDICT, body), LIMIT + 1)

    def test_records_instances_and_the_limit_itself(self, bounded: TestClient) -> None:
        over = ROWS[: LIMIT + 1]
        self.assert_too_many(bounded.post(PREDICT, json={"records": records(over)}), LIMIT + 1)
        mixed = [[*row[:3], "x"] for row in over]  # not numbers: the general parser
        self.assert_too_many(bounded.post(PREDICT, json={"instances": mixed}), LIMIT + 1)
        for body in ({"instances": ROWS[:LIMIT]}, {"records": records(ROWS[:LIMIT])}):
            response = bounded.post(PREDICT, json=body)
            assert response.status_code == 200, response.text
            assert len(response.json()["predictions"]) == LIMIT

    def test_large_bodies_are_counted_as_they_are_read(self, bounded: TestClient) -> None:
        body = orjson.dumps({"records": records(ROWS[:4000])})
        assert len(body) > OFF_LOOP_BODY_BYTES
        self.assert_too_many(post(bounded, PREDICT, body), 4000)
        body = orjson.dumps({"instances": ROWS[:15_000]})
        assert len(body) > OFF_LOOP_BODY_BYTES
        self.assert_too_many(post(bounded, PREDICT, body), 15_000)

    def test_v2_counts_the_batch_dimension(self, bounded: TestClient) -> None:
        rows = ROWS[: LIMIT + 1]
        matrix = {
            "inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP64", "data": rows}]
        }
        assert_v2_error(bounded.post(INFER, json=matrix), 413, str(LIMIT + 1), str(LIMIT))
        columns = {
            "inputs": [
                {
                    "name": name,
                    "shape": [len(rows)],
                    "datatype": "FP64",
                    "data": [row[i] for row in rows],
                }
                for i, name in enumerate(NAMES)
            ]
        }
        assert_v2_error(bounded.post(INFER, json=columns), 413, "GRAFT_MAX_PREDICT_ROWS")
        raw = np.asarray(rows, dtype="<f4").tobytes()
        header = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [len(rows), 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        text = json.dumps(header).encode()
        response = bounded.post(
            INFER,
            content=text + raw,
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(text)),
            },
        )
        assert_v2_error(response, 413, str(LIMIT + 1))
        matrix["inputs"][0]["shape"] = [LIMIT, 4]
        matrix["inputs"][0]["data"] = rows[:LIMIT]
        assert bounded.post(INFER, json=matrix).status_code == 200

    def test_the_service_itself_refuses(self, bounded: TestClient) -> None:
        service: PredictionService = bounded.app.state.predictions  # type: ignore[attr-defined]
        resolved = asyncio.run(service.resolve("iris-source"))
        with pytest.raises(TooLarge):
            asyncio.run(service.predict(resolved, instances=ROWS[: LIMIT + 1]))


# -- large bodies off the event loop --------------------------------------------------------


class TestLargeBodies:
    """Bodies over OFF_LOOP_BODY_BYTES take the stepped path on a worker thread: the same
    answers and the same errors as small ones."""

    @pytest.fixture
    def threads(self, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
        """Whether each large-body parse ran off the event loop."""
        off_loop: list[bool] = []
        original = predict_routes.parse_large_predict_body

        def spy(body: bytes, max_rows: int | None = None) -> Any:
            try:
                asyncio.get_running_loop()
                off_loop.append(False)
            except RuntimeError:
                off_loop.append(True)
            return original(body, max_rows)

        monkeypatch.setattr(predict_routes, "parse_large_predict_body", spy)
        return off_loop

    def pieces(self, client: TestClient, rows: list[list[float]]) -> dict[str, list[Any]]:
        parts = [
            client.post(PREDICT, json={"instances": rows[i : i + 500]}).json()
            for i in range(0, len(rows), 500)
        ]
        return {
            "predictions": [p for part in parts for p in part["predictions"]],
            "probabilities": [row for part in parts for row in part["probabilities"]],
        }

    def assert_same(self, response: Any, expected: dict[str, list[Any]]) -> None:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == {"name": "iris-source", "version": 1}
        assert body["predictions"] == expected["predictions"]
        np.testing.assert_allclose(
            body["probabilities"], expected["probabilities"], rtol=1e-6, atol=1e-7
        )

    def test_records_and_instances_answer_as_small_requests(
        self, trained_client: TestClient, threads: list[bool]
    ) -> None:
        rows = ROWS[:4000]
        expected = self.pieces(trained_client, rows)
        body = orjson.dumps({"records": records(rows)})
        assert len(body) > OFF_LOOP_BODY_BYTES
        self.assert_same(post(trained_client, PREDICT, body), expected)
        assert threads == [True]
        rows = ROWS[:15_000]
        dense = orjson.dumps({"instances": rows})
        assert len(dense) > OFF_LOOP_BODY_BYTES
        self.assert_same(post(trained_client, PREDICT, dense), self.pieces(trained_client, rows))
        assert threads == [True]  # numbers only: the bulk parse, off the loop too

    def test_errors_name_the_row_as_for_small_bodies(
        self, trained_client: TestClient, threads: list[bool]
    ) -> None:
        rows: list[list[Any]] = [list(row) for row in ROWS[:15_000]]
        rows[12_345][1] = "wide"
        body = orjson.dumps({"instances": rows})
        problem = assert_problem(post(trained_client, PREDICT, body), 422, "invalid_data")
        assert problem["detail"] == (
            "instance 12345, feature 'sepal width (cm)': expected a number, got 'wide'"
        )
        rows[12_345] = [1.0, 2.0]
        problem = assert_problem(
            post(trained_client, PREDICT, orjson.dumps({"instances": rows})),
            422,
            "feature_mismatch",
        )
        assert "got 2 in instance 12345" in problem["detail"]
        lenient = body.replace(b'"wide"', b"NaN")
        problem = assert_problem(post(trained_client, PREDICT, lenient), 422, "invalid_data")
        assert "instance 12345" in problem["detail"] and "finite" in problem["detail"]
        broken = body[: len(body) // 2] + b"]" + body[len(body) // 2 :]
        small = parse_predict_body_error(broken)
        problem = assert_problem(post(trained_client, PREDICT, broken), 422, "validation_error")
        assert problem["detail"] == small
        assert threads and all(threads)

    def test_booleans_are_refused_in_large_bodies_too(self, trained_client: TestClient) -> None:
        rows: list[list[Any]] = [list(row) for row in ROWS[:15_000]]
        rows[14_000][0] = True
        problem = assert_problem(
            post(trained_client, PREDICT, orjson.dumps({"instances": rows})), 422, "invalid_data"
        )
        assert "instance 14000" in problem["detail"]

    def test_the_stepped_parser_reads_as_the_general_one(self) -> None:
        bodies = [
            b'{"instances": [[1,2],[3,4]]}',
            b' { "records" : [ {"a": 1} , {"b": NaN} ] } ',
            b'{"instances": [[1,2] [3,4]]}',
            b'{"instances": [[1,2],]}',
            b'{"instances": [}',
            b'{"instances": [[1,2]], "x": 1}',
            b'{"instances" [[1]]}',
            b'{"instances": [[1]]} x',
            b'{"instances": [[1], ',
            b"{}",
            b'{"instances": null, "records": [{"a":1}]}',
            b'{"records": [{"a":1}], "records": [[1]]}',
            b'{"instances": [1e400, Infinity]}',
            b'\xef\xbb\xbf{"instances": [[1]]}',
            b'{"instances": [["\xff"]]}',
            '{"instances": [["é"]]}'.encode("utf-16"),
            b'{"instances": [[1,2]],\n "',
            b'{"instances": [' + b"[" * 5000 + b"]" * 5000 + b"]}",
            b'{"instances": [[1],[2],[3],[4]]}',  # over the limit of 3 below
        ]
        for body in bodies:
            assert outcome(parse_predict_body, body) == outcome(parse_large_predict_body, body)

    def test_stepped_encoding_writes_the_same_bytes(self) -> None:
        resolved = ResolvedVersion(id="v", name="iris", version=3)
        rng = np.random.default_rng(0)
        probabilities = rng.random((100_003, 3), dtype=np.float32)
        labels = [["a", "b", "c"][i % 3] for i in range(100_003)]
        for result in (
            Prediction(predictions=labels, classes=["a", "b", "c"], probabilities=probabilities),
            Prediction(predictions=rng.random(70_001).tolist()),
            Prediction(predictions=[1.5]),
        ):
            assert _encode_in_steps(resolved, result) == _encode(resolved, result)
        outputs = [
            OutputTensor("predictions", "BYTES", np.array(labels, dtype=object)),
            OutputTensor("probabilities", "FP32", probabilities),
        ]
        header = {"model_name": "iris", "model_version": "3", "id": "é"}
        for binary in (set(), {"probabilities"}, {"predictions", "probabilities"}):
            assert encode_response(header, outputs, binary, steps=True) == encode_response(
                header, outputs, binary
            )

    def test_v2_large_json_answers_as_small_requests(self, trained_client: TestClient) -> None:
        rows = ROWS[:15_000]
        nested = {
            "inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]
        }
        flat = {"inputs": [{**nested["inputs"][0], "data": [v for row in rows for v in row]}]}
        small = [
            trained_client.post(
                INFER,
                json={
                    "inputs": [
                        {
                            **nested["inputs"][0],
                            "shape": [len(rows[i : i + 1000]), 4],
                            "data": rows[i : i + 1000],
                        }
                    ]
                },
            ).json()
            for i in range(0, len(rows), 1000)
        ]
        expected = [p for part in small for p in part["outputs"][0]["data"]]
        for body in (nested, flat):
            text = json.dumps(body).encode()
            assert len(text) > OFF_LOOP_BODY_BYTES
            response = post(trained_client, INFER, text)
            assert response.status_code == 200, response.text
            assert response.json()["outputs"][0]["data"] == expected
        columns = {
            "inputs": [
                {
                    "name": name,
                    "shape": [len(rows)],
                    "datatype": "FP64",
                    "data": [r[i] for r in rows],
                }
                for i, name in enumerate(NAMES)
            ]
        }
        response = post(trained_client, INFER, json.dumps(columns).encode())
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == expected

    def test_v2_large_json_errors(self, trained_client: TestClient) -> None:
        rows: list[Any] = [list(row) for row in ROWS[:15_000]]
        rows[7][2:] = [1.0]  # ragged
        body = {
            "inputs": [{"name": "input", "shape": [len(rows), 4], "datatype": "FP32", "data": rows}]
        }
        response = post(trained_client, INFER, json.dumps(body).encode())
        assert_v2_error(response, 400, "not a regular (rectangular) array")
        rows[7] = [1.0, 2.0, 3.0, "x"]
        response = post(trained_client, INFER, json.dumps(body).encode())
        assert_v2_error(response, 400, "is FP32: expected numbers")
        rows[7] = [1.0, 2.0, 3.0, float("nan")]
        response = post(trained_client, INFER, json.dumps(body).encode())  # NaN: Python's parser
        assert_v2_error(response, 400, "instance 7", "finite")
        rows[7] = [1.0, 2.0, 3.0, 4.0]
        body["inputs"][0]["shape"] = [len(rows), 5]
        response = post(trained_client, INFER, json.dumps(body).encode())
        assert_v2_error(response, 400, "(75000 values) but its data holds 60000")
        body["inputs"][0]["datatype"] = "INT32"
        body["inputs"][0]["shape"] = [len(rows), 4]
        response = post(trained_client, INFER, json.dumps(body).encode())
        assert_v2_error(response, 400, "is INT32: expected integers")


class TestSteppedEquivalence:
    """The stepped paths give exactly what the one-call paths give, values and errors."""

    @pytest.fixture
    def predictor(self, trained_client: TestClient) -> Any:
        service: PredictionService = trained_client.app.state.predictions  # type: ignore[attr-defined]
        resolved = asyncio.run(service.resolve("iris-source"))
        return service.load_predictor(resolved)

    def test_row_encoding(self, predictor: Any, monkeypatch: pytest.MonkeyPatch) -> None:
        from app.services import predictions as service_module

        monkeypatch.setattr(service_module, "STEP_VALUES", 40)  # 10 rows a step
        rows: list[list[Any]] = [list(row) for row in ROWS[:95]]
        ints = [[int(v) for v in row] for row in rows]
        cases: list[tuple[list[Any] | None, list[Any] | None]] = [
            (rows, None),
            (rows[:50] + ints[50:], None),
            (None, records(rows)),
            ([*rows[:90], [1.0, True, 2.0, 3.0], *rows[90:]], None),
            ([*rows[:42], [1.0, "x", 2.0, 3.0], *rows[42:]], None),
            ([*rows[:42], [1.0, 2.0], *rows[42:]], None),
            ([*rows[:42], [1.0, [2.0], 2.0, 3.0], *rows[42:]], None),
            ([*rows[:42], [1.0, 1e300, 2.0, 3.0], *rows[42:]], None),
            ([*rows[:70], 5.0, *rows[70:]], None),
            (None, [*records(rows[:60]), {**records(rows[:1])[0], "target": 1}]),
            (None, [*records(rows[:60]), {"x": 1}, *records(rows[:5])]),
            (None, [*records(rows[:60]), [1, 2, 3, 4]]),
        ]
        for instances, recs in cases:
            expected = encoded_or_error(service_module._encoded, predictor, instances, recs)
            stepped = encoded_or_error(service_module._encoded_in_steps, predictor, instances, recs)
            if isinstance(expected, np.ndarray):
                assert isinstance(stepped, np.ndarray)
                np.testing.assert_array_equal(stepped, expected)
            else:
                assert stepped == expected

    def test_v2_decoding(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from app.api.v2 import tensors
        from app.api.v2.errors import V2Error

        def decode(body: Any, large: bool) -> Any:
            monkeypatch.setattr(tensors, "LARGE_HEADER_BYTES", 0 if large else 1 << 40)
            try:
                decoded = tensors.decode_request(json.dumps(body).encode(), None, 1000)
            except V2Error as exc:
                return (exc.status, exc.message)
            return [
                (t.name, t.datatype, t.shape, t.values.dtype, t.values.tolist())
                for t in decoded.inputs
            ]

        def tensor(datatype: str, shape: list[int], data: Any, name: str = "t") -> dict[str, Any]:
            return {"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": data}]}

        cases: list[Any] = [
            tensor("FP32", [2, 2], [[1.5, 2], [3, 4.25]]),
            tensor("FP64", [4], [1, 2, 3, 4]),
            tensor("FP16", [2, 2], [1.5, 2, 3, 4]),
            tensor("FP32", [2, 2], [[1.5, 2], [3]]),
            tensor("FP32", [2, 2], [[1.5, 2], 3, 4]),
            tensor("FP32", [2, 2], [[[1.0], [2.0]], [[3.0], [4.0]]]),
            tensor("FP32", [1, 2], [[[1.0], [2.0, 3.0]]]),
            tensor("FP32", [2, 0], [[], []]),
            tensor("FP32", [2], [True, 1.5]),
            tensor("FP32", [2], [None, 1.5]),
            tensor("FP32", [2], ["a", 1.5]),
            tensor("INT8", [3], [1, -2, 127]),
            tensor("INT8", [2], [1, 300]),
            tensor("INT32", [2], [1, 2.5]),
            tensor("INT64", [2], [1, 2**63]),
            # (UINT64 values above 2**63 are refused by the small path, NumPy reading the list
            # as floats, and taken by the large one: not compared.)
            tensor("UINT64", [2], [1, 2**63 - 1]),
            tensor("UINT8", [2], [1, -1]),
            tensor("BOOL", [2], [True, False]),
            tensor("BOOL", [2], [True, 1]),
            tensor("BYTES", [2, 1], [["a"], ["é"]]),
            tensor("BYTES", [2], ["a", 1]),
            tensor("FP32", [3], [1, 2]),
            tensor("FP32", [2**62, 2**62], [1.0]),
            {"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": [1.0], "x": 1}]},
            {"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": {"a": 1}}]},
            {"inputs": [{"name": "t", "datatype": "FP32", "shape": [1], "data": 5}]},
            [1, 2, 3],
        ]
        for body in cases:
            assert decode(body, True) == decode(body, False), body


def encoded_or_error(encode: Any, predictor: Any, instances: Any, recs: Any) -> Any:
    try:
        return encode(predictor, instances, recs, True)
    except Exception as exc:
        return (type(exc).__name__, getattr(exc, "code", None), str(exc))


def outcome(parse: Any, body: bytes) -> Any:
    try:
        parsed = parse(body, 3)
    except Exception as exc:  # AppError, compared by what a client sees
        return (type(exc).__name__, getattr(exc, "status_code", None), str(exc))
    return (parsed.instances, parsed.records)


def parse_predict_body_error(body: bytes) -> str:
    try:
        parse_predict_body(body)
    except Exception as exc:
        return str(exc)
    raise AssertionError("expected an error")


# -- deep JSON ------------------------------------------------------------------------------


def json_routes(app: FastAPI) -> list[tuple[str, str, bool]]:
    """(method, concrete path, takes a JSON body) of every POST, PUT and PATCH operation the
    OpenAPI document lists: the routes' own bodies, and those read by hand (predict, infer)."""
    found = []
    for template, operations in app.openapi()["paths"].items():
        path = "/".join(
            ("1" if segment == "{version}" else "x") if segment.startswith("{") else segment
            for segment in template.split("/")
        )
        for method, operation in operations.items():
            if method.upper() not in ("POST", "PUT", "PATCH"):
                continue
            content = operation.get("requestBody", {}).get("content", {})
            found.append((method.upper(), path, "application/json" in content))
    return found


def deep_bodies(depth: int) -> list[bytes]:
    return [b'{"a":' * depth + b"1" + b"}" * depth, b"[" * depth + b"]" * depth]


class TestDeepJson:
    def test_v2_infer_answers_400_for_an_existing_model(self, trained_client: TestClient) -> None:
        for body in deep_bodies(100_000):
            response = trained_client.post(
                "/v2/models/iris-source/infer",
                content=body,
                headers={"Content-Type": "application/json"},
            )
            assert_v2_error(response, 400, "nested too deeply")

    @pytest.mark.parametrize("depth", [10_000, 100_000])
    def test_every_json_route_answers_400(self, client: TestClient, depth: int) -> None:
        routes = json_routes(client.app)  # type: ignore[arg-type]
        assert {(m, p) for m, p, _ in routes} >= {
            ("POST", "/v1/models/x/predict"),
            ("POST", "/v2/models/x/infer"),
            ("POST", "/v1/jobs/source-training"),
            ("POST", "/v1/datasets/builtin"),
            ("PUT", "/v1/models/x/aliases/x"),
        }
        checked = 0
        for method, path, takes_json in routes:
            for body in deep_bodies(depth):
                response = client.request(
                    method, path, content=body, headers={"Content-Type": "application/json"}
                )
                assert response.status_code < 500, (method, path, response.text)
                if not takes_json:
                    continue
                checked += 1
                if path.startswith("/v2/"):
                    # /v2 looks the model up first: there is no model x (see the next test).
                    assert_v2_error(response, 404, "no registered model")
                    continue
                assert response.status_code == 400, (method, path, response.text)
                problem = assert_problem(response, 400, "malformed_body")
                assert "nested too deeply" in problem["detail"], (path, problem)
        assert checked >= 10

    def test_depths_the_parsers_take_are_never_500(self, client: TestClient) -> None:
        for depth in (200, 900, 990):
            nested = b'{"a":' * depth + b"1" + b"}" * depth
            bodies = [*deep_bodies(depth), b'{"name": ' + nested + b"}"]
            for method, path, _ in json_routes(client.app):  # type: ignore[arg-type]
                for body in bodies:
                    response = client.request(
                        method, path, content=body, headers={"Content-Type": "application/json"}
                    )
                    assert 400 <= response.status_code < 500, (depth, path, response.text)

    def test_deep_inside_a_large_body_and_a_v2_header(self, trained_client: TestClient) -> None:
        deep = b"[" * 150_000 + b"]" * 150_000
        body = b'{"instances": [' + deep + b"]}"
        assert len(body) > OFF_LOOP_BODY_BYTES
        assert_problem(post(trained_client, PREDICT, body), 400, "malformed_body")
        records_body = b'{"records": [' + b'{"a":' * 60_000 + b"1" + b"}" * 60_000 + b"]}"
        assert_problem(post(trained_client, PREDICT, records_body), 400, "malformed_body")
        header = b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": '
        for inner in (deep, b"[" * 1500 + b"1" + b"]" * 1500):
            response = post(trained_client, INFER, header + inner + b"}]}")
            assert_v2_error(response, 400)

    def test_just_parseable_depths_are_4xx_too(self, trained_client: TestClient) -> None:
        for depth in (60, 500, 900):
            nested = b"[" * depth + b"1.5" + b"]" * depth
            for body in (
                b'{"instances": [' + nested + b"]}",
                b'{"records": [{"x": ' + nested + b"}]}",
            ):
                response = post(trained_client, PREDICT, body)
                assert 400 <= response.status_code < 500, response.text
            header = b'{"inputs": [{"name": "input", "shape": [1], "datatype": "FP32", "data": '
            response = post(trained_client, INFER, header + nested + b"}]}")
            assert 400 <= response.status_code < 500, response.text


# -- /v2 tensor shapes ----------------------------------------------------------------------


class TestTensorShapes:
    def infer(self, client: TestClient, shape: Any, data: Any, datatype: str = "FP32") -> Any:
        tensor = {"name": "input", "shape": shape, "datatype": datatype, "data": data}
        return client.post(INFER, json={"inputs": [tensor]})

    def binary(self, client: TestClient, shape: list[int], raw: bytes, datatype: str) -> Any:
        header = {
            "inputs": [
                {
                    "name": "input",
                    "shape": shape,
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(raw)},
                }
            ]
        }
        text = json.dumps(header).encode()
        return client.post(
            INFER,
            content=text + raw,
            headers={
                "Content-Type": "application/octet-stream",
                "Inference-Header-Content-Length": str(len(text)),
            },
        )

    def test_products_that_overflow_int64(self, trained_client: TestClient) -> None:
        big = 2**62
        assert_v2_error(
            self.infer(trained_client, [big, big], [1.0]),
            400,
            "'input'",
            str(big * big),
            str(2**63 - 1),
        )
        for shape in ([2**70, 0], [2**64], [0, 2**63]):
            assert_v2_error(self.infer(trained_client, shape, []), 400, "'input'", "int64")
        assert_v2_error(self.binary(trained_client, [2**63, 0], b"", "FP32"), 400, "int64")
        assert_v2_error(self.binary(trained_client, [big, big, 0], b"", "BYTES"), 400, "int64")
        assert_v2_error(self.binary(trained_client, [big, 4], b"\0" * 16, "FP32"), 400, "'input'")

    def test_ranks_negative_and_mismatched_shapes(self, trained_client: TestClient) -> None:
        assert_v2_error(self.infer(trained_client, [1] * 100, [1.0]), 400, "100 dimensions")
        assert_v2_error(self.infer(trained_client, [1] * 100, ["a"], "BYTES"), 400, "dimensions")
        assert_v2_error(self.infer(trained_client, [-1, 4], [1.0] * 4), 400, "greater than")
        assert_v2_error(
            self.infer(trained_client, [3, 4], [1.0, 2.0]), 400, "'input'", "(12 values)", "2"
        )
        assert_v2_error(
            self.infer(trained_client, [2, 4], [[1.0] * 4] * 3), 400, "(8 values)", "12"
        )
        assert_v2_error(
            self.binary(trained_client, [2, 4], b"\0" * 12, "FP32"), 400, "needs 32 bytes, got 12"
        )
        one = struct.pack("<I", 1) + b"a"
        assert_v2_error(
            self.binary(trained_client, [2], one, "BYTES"), 400, "(2 values)", "holds 1 strings"
        )


# -- open event streams ---------------------------------------------------------------------

ADMIN = "request-bounds-admin-key-0123456789abcdef"
SSE = {"Accept": "text/event-stream"}


@dataclass
class StreamServer:
    url: str
    app: FastAPI

    @property
    def hub(self) -> JobEventHub:
        hub: JobEventHub = self.app.state.event_hub
        return hub

    def wait_for(self, streams: int, key_id: str | None = None) -> None:
        deadline = time.monotonic() + 15
        while self.hub.open_streams(key_id) != streams:
            assert time.monotonic() < deadline, (self.hub.open_streams(key_id), streams)
            time.sleep(0.02)


def serve(app: FastAPI) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture
def stream_server(settings: Settings) -> Iterator[StreamServer]:
    bounded = settings.model_copy(
        update={
            "auth": "enabled",
            "admin_key": SecretStr(ADMIN),
            "max_streams": 3,
            "max_streams_per_key": 2,
            "events_poll_seconds": 0.05,
            "events_keepalive_seconds": 0.3,
        }
    )
    app = create_app(bounded)
    for url in serve(app):
        yield StreamServer(url, app)


class Stream:
    """An open SSE response on a connection of its own; `close` hangs up."""

    def __init__(self, url: str, job_id: str, secret: str) -> None:
        self.client = httpx2.Client(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {secret}"}
        )
        self.context = self.client.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE)
        self.response = self.context.__enter__()
        # One iterator for the stream's life: dropping one closes the connection.
        self.lines = self.response.iter_lines()

    def first_line(self) -> str:
        line: str = next(self.lines)
        return line

    def close(self) -> None:
        self.context.__exit__(None, None, None)
        self.client.close()


def queued_job(url: str) -> str:
    with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        dataset = http.post("/v1/datasets/builtin", json={"name": "iris"}).json()
        response = http.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": dataset["id"],
                "target_column": "target",
                "model_name": "watched",
                "hyperparameters": FAST,
            },
        )
        assert response.status_code == 202, response.text
        job_id: str = response.json()["id"]
        return job_id


def new_key(url: str) -> tuple[str, str]:
    with httpx2.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        response = http.post("/v1/keys", json={"name": "watcher", "scopes": ["read"]})
        assert response.status_code == 201, response.text
        body = response.json()
        return body["id"], body["secret"]


class TestStreamCaps:
    def test_per_key_and_per_process_caps_and_hanging_up_frees_a_slot(
        self, stream_server: StreamServer
    ) -> None:
        url = stream_server.url
        job_id = queued_job(url)  # no worker: it stays queued, its streams stay open
        (a_id, a_secret), (b_id, b_secret) = new_key(url), new_key(url)
        opened = [Stream(url, job_id, a_secret) for _ in range(2)]
        try:
            for stream in opened:
                assert stream.response.status_code == 200
                assert stream.first_line() == "retry: 2000"
            stream_server.wait_for(2, a_id)
            with httpx2.Client(base_url=url, timeout=30) as http:
                refused = http.get(
                    f"/v1/jobs/{job_id}/events",
                    headers={**SSE, "Authorization": f"Bearer {a_secret}"},
                )
                problem = assert_problem(refused, 429, "too_many_streams")
                assert "GRAFT_MAX_STREAMS_PER_KEY=2" in problem["detail"]
                assert int(refused.headers["Retry-After"]) >= 1
                # Another key still gets one: the process holds 3 at most.
                opened.append(Stream(url, job_id, b_secret))
                assert opened[-1].response.status_code == 200
                stream_server.wait_for(3)
                refused = http.get(
                    f"/v1/jobs/{job_id}/events",
                    headers={**SSE, "Authorization": f"Bearer {b_secret}"},
                )
                problem = assert_problem(refused, 429, "too_many_streams")
                assert "GRAFT_MAX_STREAMS=3" in problem["detail"]
                assert "Retry-After" in refused.headers
                # The JSON listing is no stream and is never refused.
                listing = http.get(
                    f"/v1/jobs/{job_id}/events", headers={"Authorization": f"Bearer {a_secret}"}
                )
                assert listing.status_code == 200
            # A client that hangs up gives its slot back at once.
            opened.pop(0).close()
            stream_server.wait_for(1, a_id)
            stream_server.wait_for(2)
            opened.append(Stream(url, job_id, a_secret))
            assert opened[-1].response.status_code == 200
            stream_server.wait_for(2, a_id)
        finally:
            for stream in opened:
                stream.close()
        stream_server.wait_for(0)
        assert stream_server.hub.open_streams(b_id) == 0

    def test_a_stream_that_never_starts_gives_its_slot_back(self, database: Database) -> None:
        hub = JobEventHub(database, poll_seconds=1, keepalive_seconds=1, max_streams=1)
        slot = hub.reserve("key")
        events = hub.stream("job_x", 0, slot)
        assert hub.open_streams() == 1 and hub.open_streams("key") == 1
        with pytest.raises(Exception, match="open event streams"):
            hub.reserve(None)
        del events
        gc.collect()
        assert hub.open_streams() == 0 and hub.open_streams("key") == 0
        hub.reserve(None).release()

    def test_without_auth_only_the_process_cap_applies_and_no_session_is_held(
        self, settings: Settings
    ) -> None:
        app = create_app(
            settings.model_copy(
                update={"max_streams": 14, "max_streams_per_key": 2, "events_poll_seconds": 0.05}
            )
        )
        for url in serve(app):
            live = StreamServer(url, app)
            job_id = queued_job(url)
            streams = [Stream(url, job_id, "unused") for _ in range(12)]
            try:
                assert all(s.response.status_code == 200 for s in streams)
                live.wait_for(12)
                pool = app.state.database.engine.pool
                held = []
                for _ in range(50):
                    held.append(pool.checkedout())
                    time.sleep(0.01)
                assert min(held) == 0, held  # the streams hold no connection between reads
                with httpx2.Client(base_url=url, timeout=30) as http:
                    started = time.perf_counter()
                    assert http.get("/v1/jobs").status_code == 200
                    assert time.perf_counter() - started < 2
            finally:
                for stream in streams:
                    stream.close()
            live.wait_for(0)


# -- a real server: /healthz while the largest allowed predict is processed ------------------


@pytest.mark.slow
def test_healthz_answers_while_a_max_size_predict_is_processed(
    tmp_path: Path, trained_template: Path
) -> None:
    from tests.integration.conftest import LiveServer

    data_dir = tmp_path / "live"
    data_dir.mkdir()
    shutil.copy(trained_template, data_dir / "graft.db")
    limit = Settings().max_request_bytes
    server = LiveServer(data_dir, max_predict_rows=2_000_000)
    server.start()
    try:
        with server.client() as http:
            assert http.post(PREDICT, json={"instances": ROWS[:10]}).status_code == 200
        for form, body, rows in (dense_body(limit), records_body(limit)):
            stalls = healthz_during(server, body)
            response, latencies = stalls
            assert response.status_code == 200, response.text[:500]
            assert len(orjson.loads(response.content)["predictions"]) == rows
            worst = max(latencies)
            print(
                f"\n{form}: {len(body)} bytes, {rows} rows; /healthz answered {len(latencies)} "
                f"times meanwhile, slowest {worst * 1000:.1f} ms, median "
                f"{sorted(latencies)[len(latencies) // 2] * 1000:.1f} ms"
            )
            assert len(latencies) >= 5
            assert worst < 0.5, worst
    finally:
        server.stop()


def dense_body(limit: int) -> tuple[str, bytes, int]:
    row_texts = [orjson.dumps([round(v, 1) for v in row]) for row in ROWS[:1000]]
    width = 18  # the longest row and its comma
    texts = [text + b" " * (width - 1 - len(text)) for text in row_texts if len(text) < width]
    rows = (limit - len(b'{"instances":[]}')) // width
    body = b'{"instances":[' + b",".join(texts[i % len(texts)] for i in range(rows)) + b"]}"
    assert len(body) <= limit
    return "instances", body, rows


def records_body(limit: int) -> tuple[str, bytes, int]:
    texts = [orjson.dumps(record) for record in records(ROWS[:1000])]
    width = max(map(len, texts)) + 1
    texts = [text + b" " * (width - 1 - len(text)) for text in texts]
    rows = (limit - len(b'{"records":[]}')) // width
    body = b'{"records":[' + b",".join(texts[i % len(texts)] for i in range(rows)) + b"]}"
    assert len(body) <= limit
    return "records", body, rows


def healthz_during(server: Any, body: bytes) -> tuple[Any, list[float]]:
    """The predict response, and /healthz latencies measured while it was processed."""
    result: dict[str, Any] = {}

    def predict() -> None:
        with server.client() as http:  # 60 s timeout
            result["response"] = http.post(
                PREDICT, content=body, headers={"Content-Type": "application/json"}
            )

    thread = threading.Thread(target=predict)
    latencies: list[float] = []
    with httpx2.Client(base_url=server.url, timeout=30) as probe:
        probe.get("/healthz")
        thread.start()
        while thread.is_alive():
            started = time.perf_counter()
            assert probe.get("/healthz").status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
    thread.join()
    return result["response"], latencies
