"""Tags and descriptions on datasets, jobs, models and versions: set at creation, changed by
PATCH (a merge patch), returned on reads, and filtered on in lists with ?tag=key:value."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.db.session import Database
from tests.helpers import FAST, assert_problem, builtin, csv_bytes, run_pending_jobs

pytestmark = pytest.mark.postgres


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    return [
        item["version"] if "version" in item else item.get("id", item.get("name")) for item in data
    ]


def test_datasets_tags_at_creation_patch_and_filter(client: TestClient) -> None:
    vision = builtin(client, "iris", tags={"team": "vision", "stage": "raw"}, description="first")
    assert vision["tags"] == {"team": "vision", "stage": "raw"} and vision["description"] == "first"
    other = builtin(client, "wine", tags={"team": "audio"})
    plain = builtin(client, "iris")
    assert plain["tags"] == {} and plain["description"] is None
    import pandas as pd

    uploaded = client.post(
        "/v1/datasets",
        files={"file": ("t.csv", csv_bytes(pd.DataFrame({"a": [1, 2], "b": [3, 4]})), "text/csv")},
        data={"tags": '{"team": "vision"}', "description": "uploaded"},
    )
    assert uploaded.status_code == 201, uploaded.text
    assert uploaded.json()["tags"] == {"team": "vision"}

    assert ids(client.get("/v1/datasets?tag=team:vision")) == [uploaded.json()["id"], vision["id"]]
    assert ids(client.get("/v1/datasets?tag=team:vision&tag=stage:raw")) == [vision["id"]]
    assert ids(client.get("/v1/datasets?tag=team:nobody")) == []

    patched = client.patch(
        f"/v1/datasets/{vision['id']}",
        json={"tags": {"stage": None, "owner": "ana"}, "description": None},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["tags"] == {"team": "vision", "owner": "ana"}
    assert patched.json()["description"] is None
    assert client.get(f"/v1/datasets/{vision['id']}").json()["tags"] == patched.json()["tags"]
    # Leaving a field out keeps it.
    kept = client.patch(f"/v1/datasets/{other['id']}", json={"description": "red and white"})
    assert kept.json()["tags"] == {"team": "audio"}
    assert kept.json()["description"] == "red and white"


def test_bad_tags_are_422_and_change_nothing(client: TestClient) -> None:
    dataset = builtin(client, "iris", tags={"team": "vision"})
    path = f"/v1/datasets/{dataset['id']}"
    assert_problem(client.patch(path, json={"tags": {"bad key!": "x"}}), 422, "validation_error")
    assert_problem(client.patch(path, json={"tags": {"k": "v" * 513}}), 422, "validation_error")
    assert_problem(client.patch(path, json={"tags": {"k": 3}}), 422, "validation_error")
    assert_problem(client.patch(path, json={"colour": "red"}), 422, "validation_error")
    many = {f"k{i}": "v" for i in range(50)}
    assert_problem(client.patch(path, json={"tags": many}), 422, "too_many_tags")
    assert client.get(path).json()["tags"] == {"team": "vision"}
    assert_problem(client.get("/v1/datasets?tag=novalue"), 422, "validation_error")
    assert_problem(
        client.patch("/v1/datasets/ds_nope", json={"tags": {}}), 404, "dataset_not_found"
    )
    refused = client.post(
        "/v1/datasets",
        files={"file": ("t.csv", b"a,b\n1,2\n", "text/csv")},
        data={"tags": "[1, 2]"},
    )
    assert_problem(refused, 422, "invalid_tags")


def test_an_upload_field_sent_twice_is_422_and_nothing_is_stored(client: TestClient) -> None:
    """Found by the contract check: a form that repeats a field had one value kept and the
    others dropped silently."""
    for field, values in (("description", ["one", "two"]), ("name", ["a", "b"])):
        refused = client.post(
            "/v1/datasets",
            files=[
                ("file", ("t.csv", b"a,b\n1,2\n", "text/csv")),
                *((field, (None, value.encode())) for value in values),
            ],
        )
        assert_problem(refused, 422, "repeated_field")
        assert field in refused.json()["detail"]
    twice = client.post(
        "/v1/datasets",
        files=[
            ("file", ("t.csv", b"a,b\n1,2\n", "text/csv")),
            ("file", ("u.csv", b"a,b\n3,4\n", "text/csv")),
        ],
    )
    assert_problem(twice, 422, "repeated_field")
    assert client.get("/v1/datasets").json()["data"] == []
    once = client.post(
        "/v1/datasets",
        files={"file": ("t.csv", b"a,b\n1,2\n", "text/csv")},
        data={"description": "once", "name": "t"},
    )
    assert once.status_code == 201 and once.json()["description"] == "once"


def test_jobs_and_the_versions_they_register(client: TestClient, database: Database) -> None:
    dataset = builtin(client, "iris")
    body = {
        "dataset_id": dataset["id"],
        "target_column": "target",
        "model_name": "m",
        "hyperparameters": FAST,
        "tags": {"experiment": "e1"},
        "description": "baseline",
    }
    job = client.post("/v1/jobs/source-training", json=body).json()
    assert job["tags"] == {"experiment": "e1"} and job["description"] == "baseline"
    other = client.post("/v1/jobs/source-training", json={**body, "tags": {"experiment": "e2"}})
    run_pending_jobs(database)
    assert ids(client.get("/v1/jobs?tag=experiment:e1")) == [job["id"]]
    assert ids(client.get("/v1/jobs?status=succeeded&tag=experiment:e2")) == [other.json()["id"]]
    patched = client.patch(f"/v1/jobs/{job['id']}", json={"tags": {"reviewed": "yes"}})
    assert patched.json()["tags"] == {"experiment": "e1", "reviewed": "yes"}
    assert patched.json()["status"] == "succeeded"

    # A version starts with its job's tags; then each has its own.
    version = client.get("/v1/models/m/versions/1").json()
    assert version["tags"] == {"experiment": "e1"} and version["description"] == "baseline"
    client.patch("/v1/models/m/versions/2", json={"tags": {"stage": "production"}})
    assert ids(client.get("/v1/models/m/versions?tag=stage:production")) == [2]
    assert ids(client.get("/v1/models/m/versions?tag=experiment:e1")) == [1]

    model = client.patch("/v1/models/m", json={"tags": {"owner": "ana"}, "description": "iris"})
    assert model.status_code == 200, model.text
    assert model.json()["tags"] == {"owner": "ana"} and model.json()["latest_version"] == 2
    assert ids(client.get("/v1/models?tag=owner:ana")) == ["m"]
    assert ids(client.get("/v1/models?tag=owner:bob")) == []
    assert_problem(client.patch("/v1/models/nope", json={}), 404, "model_not_found")
    assert_problem(
        client.patch("/v1/models/m/versions/9", json={"tags": {}}), 404, "version_not_found"
    )
