import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import orjson
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from app.serving.dense import dense_instances
from tests.helpers import STRATEGIES, assert_problem


@pytest.fixture(params=[True, False], ids=["fast-lane", "route-only"])
def trained_client(
    request: pytest.FixtureRequest, tmp_path: Path, trained_template: Path
) -> Iterator[TestClient]:
    """Every predict test runs twice: through the fast lane (app/api/fast_lane.py) and with
    it switched off, through the FastAPI route alone."""
    data_dir = tmp_path / "trained"
    data_dir.mkdir()
    shutil.copy(trained_template, data_dir / "graft.db")
    settings = Settings(data_dir=data_dir, workers=0, predict_fast_lane=request.param)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


SETOSA = [5.1, 3.5, 1.4, 0.2]
VIRGINICA = [6.7, 3.0, 5.2, 2.3]
NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
# A value in place of the sepal width, and what the 422 says about it.
BAD_VALUES = [
    (b"NaN", "expected a finite number, got nan"),
    (b"Infinity", "expected a finite number, got inf"),
    (b"1e400", "expected a finite number, got inf"),
    (b"1e300", "out of the range this model can take"),
    (b"true", "expected a number, got True"),
    (b'"3.5"', "expected a number, got '3.5'"),
    (b"null", "expected a number, got None"),
    (b"[3.5]", "expected a number, got [3.5]"),
]


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
            self.post(trained_client, body, "?version=1&alias=canary"), 404, "alias_not_found"
        )

    def test_version_and_alias_together_pin_the_alias(self, trained_client: TestClient) -> None:
        body = {"instances": [SETOSA]}
        moved = trained_client.put("/v1/models/iris-source/aliases/canary", json={"version": 1})
        assert moved.status_code == 200
        pinned = self.post(trained_client, body, "?version=1&alias=canary")
        assert pinned.status_code == 200
        assert pinned.json()["model"] == {"name": "iris-source", "version": 1}
        assert_problem(
            self.post(trained_client, body, "?version=2&alias=canary"), 409, "alias_mismatch"
        )


class TestHotPathErrors:
    """The fast path hands anything it cannot vouch for to the checked one: same problems."""

    def raw(self, client: TestClient, body: bytes, query: str = "", **headers: str) -> object:
        return client.post(
            f"/v1/models/iris-source/predict{query}",
            content=body,
            headers={"content-type": "application/json", **headers},
        )

    @pytest.mark.parametrize("value, fragment", BAD_VALUES)
    def test_bad_values_name_instance_and_feature(
        self, trained_client: TestClient, value: bytes, fragment: str
    ) -> None:
        body = b'{"instances": [[5.1, 3.5, 1.4, 0.2], [5.1, ' + value + b", 1.4, 0.2]]}"
        problem = assert_problem(self.raw(trained_client, body), 422, "invalid_data")
        assert "instance 1, feature 'sepal width (cm)'" in problem["detail"]
        assert fragment in problem["detail"]

    def test_a_boolean_among_numbers_is_caught(self, trained_client: TestClient) -> None:
        # NumPy would read it as 1.0; the body scan sends it to the checked path.
        problem = assert_problem(
            self.post_json(trained_client, {"instances": [[5.1, 3.5, 1.4, False]]}),
            422,
            "invalid_data",
        )
        assert "feature 'petal width (cm)': expected a number, got False" in problem["detail"]

    def post_json(self, client: TestClient, body: object) -> object:
        return client.post("/v1/models/iris-source/predict", json=body)

    @pytest.mark.parametrize(
        "body, fragment",
        [
            ({"instances": [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]}, "got 2 in instance 1"),
            ({"instances": [SETOSA, 5.0]}, "instance 1: expected a list of 4 values"),
            ({"records": [dict(zip(NAMES, SETOSA, strict=True)), [1, 2]]}, "record 1"),
        ],
    )
    def test_wrong_shapes(self, trained_client: TestClient, body: object, fragment: str) -> None:
        problem = assert_problem(self.post_json(trained_client, body), 422, "feature_mismatch")
        assert fragment in problem["detail"]

    def test_record_with_extra_key_names_it(self, trained_client: TestClient) -> None:
        record = dict(zip(NAMES, SETOSA, strict=True)) | {"colour": "red"}
        problem = assert_problem(
            self.post_json(trained_client, {"records": [record]}), 422, "feature_mismatch"
        )
        assert "record 0: unknown ['colour']" in problem["detail"]

    def test_records_may_carry_the_target_column(self, trained_client: TestClient) -> None:
        record = dict(zip(NAMES, SETOSA, strict=True)) | {"target": "setosa"}
        response = self.post_json(trained_client, {"records": [record]})
        assert response.status_code == 200, response.text  # type: ignore[attr-defined]

    @pytest.mark.parametrize(
        "body, loc",
        [
            (b"{not json", ["body", 1]),
            (b"[1, 2]", ["body"]),
            (b'{"instances": [[1]], "extra": 1}', ["body", "extra"]),
            (b'{"instances": {"a": 1}}', ["body", "instances"]),
            (b'{"records": []}', ["body", "records"]),
            (b'{"instances": null}', ["body", "instances"]),
        ],
    )
    def test_malformed_bodies(self, trained_client: TestClient, body: bytes, loc: list) -> None:
        problem = assert_problem(self.raw(trained_client, body), 422, "validation_error")
        assert problem["errors"][0]["loc"] == loc
        assert problem["instance"] == "/v1/models/iris-source/predict"

    def test_non_json_content_type(self, trained_client: TestClient) -> None:
        response = self.raw(trained_client, b"5.1,3.5,1.4,0.2", **{"content-type": "text/csv"})
        problem = assert_problem(response, 415, "unsupported_media_type")
        assert "text/csv" in problem["detail"]

    @pytest.mark.parametrize("query", ["?version=0", "?version=abc", f"?version={2**31}"])
    def test_bad_version_numbers(self, trained_client: TestClient, query: str) -> None:
        body = b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'
        problem = assert_problem(self.raw(trained_client, body, query), 422, "validation_error")
        assert problem["errors"][0]["loc"] == ["query", "version"]


class TestBulkBodies:
    """Bodies of thousands of numeric rows are parsed to a matrix in one step (app/serving/
    dense.py): the answers are those of small requests and the problems those of the checked
    path, which gets every body or version the bulk parse cannot vouch for."""

    ROWS = np.round(np.random.default_rng(7).normal(size=(2_000, 4)) * 2 + 4, 3).tolist()

    @pytest.fixture
    def matrices(self, monkeypatch: pytest.MonkeyPatch) -> list[bool]:
        from app.api.routes import predictions as routes

        taken: list[bool] = []

        def spy(body: bytes, max_rows: int | None = None) -> object:
            matrix = dense_instances(body, max_rows)
            taken.append(matrix is not None)
            return matrix

        monkeypatch.setattr(routes, "dense_instances", spy)
        return taken

    def test_same_answers_as_small_requests(
        self, trained_client: TestClient, matrices: list[bool]
    ) -> None:
        bulk = trained_client.post("/v1/models/iris-source/predict", json={"instances": self.ROWS})
        assert bulk.status_code == 200, bulk.text
        assert matrices == [True]
        pieces = [
            trained_client.post(
                "/v1/models/iris-source/predict", json={"instances": self.ROWS[i : i + 50]}
            ).json()
            for i in range(0, len(self.ROWS), 50)
        ]
        assert matrices[1:] == [False] * len(pieces)
        body = bulk.json()
        assert body["predictions"] == [p for piece in pieces for p in piece["predictions"]]
        np.testing.assert_allclose(
            body["probabilities"],
            [row for piece in pieces for row in piece["probabilities"]],
            rtol=1e-6,
            atol=1e-7,
        )

    def test_regression(self, trained_client: TestClient, matrices: list[bool]) -> None:
        width = len(
            trained_client.get("/v1/models/diabetes/versions/1").json()["signature"]["inputs"]
        )
        rows = np.random.default_rng(8).normal(scale=0.05, size=(500, width)).round(5).tolist()
        bulk = trained_client.post("/v1/models/diabetes/predict", json={"instances": rows})
        one = trained_client.post("/v1/models/diabetes/predict", json={"instances": rows[-1:]})
        assert matrices == [True, False]
        assert bulk.json()["predictions"][-1] == pytest.approx(one.json()["predictions"][0])

    @pytest.mark.parametrize("value, fragment", BAD_VALUES)
    def test_bad_values_name_instance_and_feature(
        self, trained_client: TestClient, value: bytes, fragment: str
    ) -> None:
        good = orjson.dumps(self.ROWS[:500])[1:-1]
        body = b'{"instances": [' + good + b", [5.1, " + value + b", 1.4, 0.2]]}"
        problem = assert_problem(
            trained_client.post(
                "/v1/models/iris-source/predict",
                content=body,
                headers={"content-type": "application/json"},
            ),
            422,
            "invalid_data",
        )
        assert "instance 500, feature 'sepal width (cm)'" in problem["detail"]
        assert fragment in problem["detail"]

    @pytest.mark.parametrize(
        "last, code, fragment",
        [
            ([1.0, 2.0], "feature_mismatch", "got 2 in instance 500"),
            (5.0, "feature_mismatch", "instance 500: expected a list of 4 values"),
        ],
    )
    def test_wrong_shapes(
        self, trained_client: TestClient, last: object, code: str, fragment: str
    ) -> None:
        body = {"instances": [*self.ROWS[:500], last]}
        response = trained_client.post("/v1/models/iris-source/predict", json=body)
        assert fragment in assert_problem(response, 422, code)["detail"]

    def test_every_row_of_another_width(
        self, trained_client: TestClient, matrices: list[bool]
    ) -> None:
        body = {"instances": [row[:3] for row in self.ROWS]}
        response = trained_client.post("/v1/models/iris-source/predict", json=body)
        problem = assert_problem(response, 422, "feature_mismatch")
        assert (
            "expected 4 features" in problem["detail"]
            and "got 3 in instance 0" in problem["detail"]
        )
        assert matrices == [True]  # parsed in bulk, then checked row by row

    def test_unknown_model_and_bad_body_keep_their_order(self, trained_client: TestClient) -> None:
        body = {"instances": self.ROWS}
        missing = trained_client.post("/v1/models/nope/predict", json=body)
        assert_problem(missing, 404, "model_not_found")
        extra = trained_client.post(
            "/v1/models/nope/predict", json={"instances": self.ROWS, "extra": 1}
        )
        assert assert_problem(extra, 422, "validation_error")["errors"][0]["loc"] == [
            "body",
            "extra",
        ]


class TestServingMetadata:
    def test_versions_report_their_memory(self, trained_client: TestClient) -> None:
        version = trained_client.get("/v1/models/iris-source/versions/1").json()
        # 4 -> 10 -> 10 -> 3 MLP in float32: (4*10 + 10 + 10*10 + 10 + 10*3 + 3) * 4 bytes.
        assert version["memory_bytes"] == (40 + 10 + 100 + 10 + 30 + 3) * 4

    def test_an_alias_move_takes_effect_on_the_next_request(
        self, trained_client: TestClient
    ) -> None:
        client = trained_client
        fine_tuned = client.post(
            "/v1/jobs/fine-tuning",
            json={
                "base_model": {"name": "iris-source", "version": 1},
                "dataset_id": client.get("/v1/models/iris-source/versions/1").json()["dataset_id"],
                "target_column": "target",
                "model_name": "iris-source",
                "strategy": "feature",
                "hyperparameters": {"epochs": 1},
            },
        )
        assert fine_tuned.status_code == 202, fine_tuned.text
        from tests.helpers import run_pending_jobs

        run_pending_jobs(client.app.state.database)  # type: ignore[attr-defined]
        body = {"instances": [SETOSA]}
        client.put("/v1/models/iris-source/aliases/production", json={"version": 1})
        assert client.post("/v1/models/iris-source/predict", json=body).json()["model"] == {
            "name": "iris-source",
            "version": 1,
        }
        client.put("/v1/models/iris-source/aliases/production", json={"version": 2})
        moved = client.post("/v1/models/iris-source/predict", json=body).json()
        assert moved["model"]["version"] == 2
        client.delete("/v1/models/iris-source/aliases/production")
        latest = client.post("/v1/models/iris-source/predict", json=body).json()
        assert latest["model"]["version"] == 2
        cache = client.app.state.model_cache  # type: ignore[attr-defined]
        assert cache.stats()["loads"] == 2


class TestFastLane:
    def test_marks_route_and_version_for_outer_middleware(
        self, tmp_path: object, trained_template: object
    ) -> None:
        import shutil
        from pathlib import Path

        from app.api.routes.predictions import predict
        from app.config import Settings
        from app.main import create_app

        data_dir = Path(str(tmp_path)) / "lane"
        data_dir.mkdir()
        shutil.copy(str(trained_template), data_dir / "graft.db")
        app = create_app(Settings(data_dir=data_dir, workers=0))
        seen: list[dict[str, object]] = []

        @app.middleware("http")
        async def record(request: object, call_next: object) -> object:
            response = await call_next(request)  # type: ignore[operator]
            seen.append(request.scope)  # type: ignore[attr-defined]
            return response

        with TestClient(app) as client:
            ok = client.post("/v1/models/iris-source/predict", json={"instances": [SETOSA]})
            missing = client.post("/v1/models/nope/predict", json={"instances": [SETOSA]})
        assert ok.status_code == 200 and missing.status_code == 404
        route = seen[0]["route"]
        assert route.endpoint is predict  # type: ignore[attr-defined]
        version = seen[0]["state"]["model_version"]  # type: ignore[index]
        assert (version.name, version.version) == ("iris-source", 1)


def test_predictions_write_nothing_to_the_database(trained_client: TestClient) -> None:
    import sqlite3

    database = trained_client.app.state.database  # type: ignore[attr-defined]
    body = {"instances": [SETOSA, VIRGINICA]}
    assert trained_client.post("/v1/models/iris-source/predict", json=body).status_code == 200
    watcher = sqlite3.connect(database.engine.url.database)
    # data_version changes when any other connection commits a change to the file.
    before = watcher.execute("PRAGMA data_version").fetchone()
    for query in ("", "?version=1", "?alias=missing"):
        trained_client.post(f"/v1/models/iris-source/predict{query}", json=body)
    after = watcher.execute("PRAGMA data_version").fetchone()
    watcher.close()
    assert before == after
