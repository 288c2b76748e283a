"""The predict fast lane answers exactly what the route answers: the same requests against
an app with the lane and one without it, compared status, headers that matter and body."""

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app

SETOSA = [5.1, 3.5, 1.4, 0.2]
NAMES = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
KEY = "fast-lane-test-admin-key-0123456789"
JSON = {"Content-Type": "application/json"}
IRIS = "/v1/models/iris-source/predict"
ROW = b'{"instances": [[1,2,3,4]]}'

# (method, path, headers, body): the good, the bad and the odd.
REQUESTS: list[tuple[str, str, dict[str, str], bytes]] = [
    ("POST", "/v1/models/iris-source/predict", JSON, b'{"instances": [[5.1, 3.5, 1.4, 0.2]]}'),
    ("POST", "/v1/models/iris-feature/predict?version=1", JSON, ROW),
    ("POST", "/v1/models/diabetes/predict", JSON, b'{"instances": [[0,0,0,0,0,0,0,0,0,0]]}'),
    (
        "POST",
        "/v1/models/iris-source/predict",
        JSON,
        b'{"records": [{"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, '
        b'"petal length (cm)": 1.4, "petal width (cm)": 0.2}]}',
    ),
    ("POST", IRIS + "?alias=production", JSON, ROW),
    ("POST", IRIS + "?alias=canary", JSON, ROW),
    ("POST", IRIS + "?version=1&alias=production", JSON, ROW),
    ("POST", "/v1/models/iris-source/predict?version=7", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/iris-source/predict?version=x", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/iris-source/predict?version=0", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/nope/predict", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/iris-source/predict", JSON, b'{"instances": [[1,2,3]]}'),
    ("POST", "/v1/models/iris-source/predict", JSON, b'{"instances": [[1,"x",3,4]]}'),
    ("POST", "/v1/models/iris-source/predict", JSON, b'{"instances": [[1,NaN,3,4]]}'),
    ("POST", "/v1/models/iris-source/predict", JSON, b'{"instances": []}'),
    ("POST", "/v1/models/iris-source/predict", JSON, b"{}"),
    ("POST", "/v1/models/iris-source/predict", JSON, b"not json"),
    ("POST", "/v1/models/iris-source/predict", {"Content-Type": "text/plain"}, b"{}"),
    ("POST", "/v1/models/iris-source/predict", {}, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/iris%2Dsource/predict", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/iris-source/predict/", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models//predict", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("POST", "/v1/models/a/b/predict", JSON, b'{"instances": [[1,2,3,4]]}'),
    ("GET", "/v1/models/iris-source/predict", {}, b""),
    ("PUT", "/v1/models/iris-source/predict", JSON, b'{"instances": [[1,2,3,4]]}'),
]  # fmt: skip
# What a client may act on; the request id and the timing differ from request to request.
COMPARED_HEADERS = ("content-type", "content-length", "allow", "retry-after", "www-authenticate")


def _client(template: Path, folder: Path, fast_lane: bool) -> TestClient:
    folder.mkdir()
    shutil.copy(template, folder / "graft.db")
    settings = Settings(
        data_dir=folder, workers=0, predict_fast_lane=fast_lane, admin_key=KEY, auth="enabled"
    )
    return TestClient(create_app(settings), raise_server_exceptions=False)


@pytest.fixture(scope="module")
def both(
    tmp_path_factory: pytest.TempPathFactory, trained_template: Path
) -> Iterator[tuple[TestClient, TestClient]]:
    # One pair of apps for the module: every request below leaves the registry as it was.
    folder = tmp_path_factory.mktemp("fast-lane")
    with (
        _client(trained_template, folder / "lane", True) as lane,
        _client(trained_template, folder / "route", False) as route,
    ):
        for client in (lane, route):
            client.headers["Authorization"] = f"Bearer {KEY}"
            moved = client.put("/v1/models/iris-source/aliases/production", json={"version": 1})
            assert moved.status_code == 200, moved.text
        yield lane, route


def _answer(
    client: TestClient, method: str, path: str, headers: dict[str, str], body: bytes
) -> Any:
    response = client.request(method, path, headers=headers, content=body or None)
    kept = {name: response.headers.get(name) for name in COMPARED_HEADERS}
    return response.status_code, kept, response.content


@pytest.mark.parametrize(("method", "path", "headers", "body"), REQUESTS)
def test_the_lane_answers_what_the_route_answers(
    both: tuple[TestClient, TestClient],
    method: str,
    path: str,
    headers: dict[str, str],
    body: bytes,
) -> None:
    lane, route = both
    assert _answer(lane, method, path, headers, body) == _answer(route, method, path, headers, body)


def test_the_lane_sits_behind_auth_and_the_body_limit(
    both: tuple[TestClient, TestClient],
) -> None:
    lane, route = both
    body = b'{"instances": [[1,2,3,4]]}'
    for client in (lane, route):
        anonymous = client.post(
            "/v1/models/iris-source/predict",
            content=body,
            headers={**JSON, "Authorization": ""},
        )
        assert anonymous.status_code == 401
    huge = b'{"instances": [' + b"[1,2,3,4]," * 2_000_000 + b"[1,2,3,4]]}"
    answers = [
        _answer(client, "POST", "/v1/models/iris-source/predict", JSON, huge)
        for client in (lane, route)
    ]
    assert answers[0] == answers[1]
    assert answers[0][0] == 413


def test_the_lane_takes_predict_requests_when_on_and_none_when_off(
    both: tuple[TestClient, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.api import fast_lane

    taken: list[str] = []
    work = fast_lane.predict_content

    async def counted(scope: Any, *args: Any) -> bytes:
        taken.append(scope["path"])
        return await work(scope, *args)

    monkeypatch.setattr(fast_lane, "predict_content", counted)
    lane, route = both
    for client in (lane, route):
        assert client.post(IRIS, content=ROW, headers=JSON).status_code == 200
        # Not the predict route: the router's, whichever app.
        assert client.post("/v1/models/iris-source/versions", content=ROW).status_code == 405
    assert taken == [IRIS]
