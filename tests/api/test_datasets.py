import io
import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.helpers import assert_problem, builtin, csv_bytes, upload

# Also run on PostgreSQL when GRAFT_TEST_DATABASE_URL is set.
pytestmark = pytest.mark.postgres

FRAME = pd.DataFrame(
    {
        "x1": [1.0, 2.0, 3.0, 4.0],
        "x2": [1, 0, 1, 0],
        "colour": ["red", "blue", "red", "green"],
        "label": ["a", "b", "a", "b"],
    }
)


class TestUpload:
    def test_csv_schema_is_inferred(self, client: TestClient) -> None:
        response = upload(client, "train.csv", csv_bytes(FRAME))
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["id"].startswith("ds_")
        assert body["name"] == "train"
        assert body["format"] == "csv"
        assert body["rows"] == 4
        assert body["columns"] == [
            {"name": "x1", "dtype": "float64"},
            {"name": "x2", "dtype": "int64"},
            {"name": "colour", "dtype": "string"},
            {"name": "label", "dtype": "string"},
        ]
        assert body["size_bytes"] == len(csv_bytes(FRAME))
        assert len(body["sha256"]) == 64

    def test_parquet_and_name(self, client: TestClient) -> None:
        buffer = io.BytesIO()
        FRAME.to_parquet(buffer, index=False)
        response = client.post(
            "/v1/datasets",
            files={"file": ("t.parquet", buffer.getvalue(), "application/octet-stream")},
            data={"name": "site B"},
        )
        assert response.status_code == 201, response.text
        assert response.json()["format"] == "parquet"
        assert response.json()["name"] == "site B"

    def test_jsonl(self, client: TestClient) -> None:
        lines = "\n".join(json.dumps(r) for r in FRAME.to_dict(orient="records")) + "\n"
        response = upload(client, "t.jsonl", lines.encode(), "application/x-ndjson")
        assert response.status_code == 201, response.text
        assert response.json()["format"] == "jsonl"
        assert response.json()["rows"] == 4

    def test_format_from_media_type_when_no_extension(self, client: TestClient) -> None:
        response = upload(client, "data", csv_bytes(FRAME), "text/csv")
        assert response.status_code == 201

    def test_untyped_file_without_extension_is_read_by_its_content(
        self, client: TestClient
    ) -> None:
        # curl -F file=@data sends no extension and application/octet-stream (or nothing).
        as_csv = upload(client, "data", csv_bytes(FRAME), "application/octet-stream")
        assert as_csv.status_code == 201 and as_csv.json()["format"] == "csv"
        lines = b'{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n'
        as_jsonl = upload(client, "rows", lines, "application/octet-stream")
        assert as_jsonl.status_code == 201 and as_jsonl.json()["format"] == "jsonl"

    def test_unsupported_type_is_415(self, client: TestClient) -> None:
        response = upload(client, "notes.txt", b"hello", "text/plain")
        body = assert_problem(response, 415, "unsupported_media_type")
        assert "CSV" in body["detail"] and "Parquet" in body["detail"]

    def test_empty_file_is_422(self, client: TestClient) -> None:
        assert_problem(upload(client, "e.csv", b""), 422, "invalid_upload")

    def test_header_only_is_422(self, client: TestClient) -> None:
        body = assert_problem(upload(client, "h.csv", b"a,b\n"), 422, "invalid_upload")
        assert "no rows" in body["detail"]

    def test_malformed_csv_names_the_line(self, client: TestClient) -> None:
        content = b"a,b\n1,2\n3,4,5\n6,7\n"
        body = assert_problem(upload(client, "m.csv", content), 422, "invalid_upload")
        assert "line 3" in body["detail"]

    def test_truncated_parquet_is_422(self, client: TestClient) -> None:
        buffer = io.BytesIO()
        FRAME.to_parquet(buffer, index=False)
        truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]
        response = upload(client, "t.parquet", truncated, "application/octet-stream")
        assert_problem(response, 422, "invalid_upload")

    def test_malformed_jsonl_names_the_line(self, client: TestClient) -> None:
        content = b'{"a": 1}\n{"a": 2}\n{"a": \n'
        body = assert_problem(upload(client, "m.jsonl", content), 422, "invalid_upload")
        assert "line 3" in body["detail"]

    def test_jsonl_line_that_is_not_an_object(self, client: TestClient) -> None:
        body = assert_problem(
            upload(client, "m.jsonl", b'{"a": 1}\n[1, 2]\n'), 422, "invalid_upload"
        )
        assert "line 2" in body["detail"]

    def test_not_utf8_is_422(self, client: TestClient) -> None:
        assert_problem(upload(client, "b.csv", b"a,b\n\xff\xfe,1\n"), 422, "invalid_upload")

    def test_missing_file_field_is_422(self, client: TestClient) -> None:
        response = client.post("/v1/datasets", data={"name": "x"})
        body = assert_problem(response, 422, "validation_error")
        assert body["errors"][0]["loc"] == ["body", "file"]

    def test_nothing_is_stored_after_a_rejected_upload(self, client: TestClient) -> None:
        upload(client, "m.csv", b"a,b\n1,2\n3,4,5\n")
        assert client.get("/v1/datasets").json()["data"] == []


class TestUploadLimit:
    @pytest.fixture
    def small_client(self, settings: Settings) -> TestClient:
        limited = settings.model_copy(update={"max_upload_bytes": 1000})
        return TestClient(create_app(limited), raise_server_exceptions=False)

    def test_declared_length_over_limit_is_413(self, small_client: TestClient) -> None:
        with small_client:
            big = b"a,b\n" + b"1,2\n" * 2000
            assert_problem(upload(small_client, "big.csv", big), 413, "request_too_large")
            assert small_client.get("/v1/datasets").json()["data"] == []

    def test_streamed_body_over_limit_is_413(self, small_client: TestClient) -> None:
        def chunks():  # no Content-Length: the limit must hold while streaming
            yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n'
            yield b"Content-Type: text/csv\r\n\r\na,b\n"
            for _ in range(500):
                yield b"1,2\n"
            yield b"\r\n--b--\r\n"

        with small_client:
            response = small_client.post(
                "/v1/datasets",
                content=chunks(),
                headers={"Content-Type": "multipart/form-data; boundary=b"},
            )
            assert_problem(response, 413, "request_too_large")

    def test_under_limit_passes(self, small_client: TestClient) -> None:
        with small_client:
            assert upload(small_client, "ok.csv", b"a,b\n1,2\n3,4\n").status_code == 201


class TestBuiltin:
    @pytest.mark.parametrize(
        ("name", "rows", "target_dtype"),
        [
            ("iris", 150, "category"),
            ("wine", 178, "category"),
            ("breast_cancer", 569, "category"),
            ("digits", 1797, "category"),
            ("diabetes", 442, "float64"),
        ],
    )
    def test_each_builtin(
        self, client: TestClient, name: str, rows: int, target_dtype: str
    ) -> None:
        body = builtin(client, name)
        assert body["rows"] == rows
        assert body["columns"][-1] == {"name": "target", "dtype": target_dtype}
        assert body["format"] == "parquet"

    def test_row_range(self, client: TestClient) -> None:
        body = builtin(client, "iris", start=100, stop=150)
        assert body["rows"] == 50
        assert body["name"] == "iris[100:150]"

    def test_shuffle_is_deterministic(self, client: TestClient) -> None:
        first = builtin(client, "iris", stop=20, shuffle_seed=7)
        second = builtin(client, "iris", stop=20, shuffle_seed=7)
        other = builtin(client, "iris", stop=20, shuffle_seed=8)
        assert first["sha256"] == second["sha256"] != other["sha256"]

    def test_range_past_the_end_is_422(self, client: TestClient) -> None:
        response = client.post(
            "/v1/datasets/builtin", json={"name": "iris", "start": 100, "stop": 200}
        )
        body = assert_problem(response, 422, "invalid_range")
        assert "150 rows" in body["detail"]

    def test_start_after_stop_is_422(self, client: TestClient) -> None:
        response = client.post("/v1/datasets/builtin", json={"name": "iris", "start": 5, "stop": 2})
        assert_problem(response, 422, "validation_error")

    def test_unknown_builtin_is_422(self, client: TestClient) -> None:
        response = client.post("/v1/datasets/builtin", json={"name": "mnist"})
        body = assert_problem(response, 422, "validation_error")
        assert "iris" in body["detail"]


class TestListGetDelete:
    def test_list_newest_first_with_cursor(self, client: TestClient) -> None:
        ids = [builtin(client, "iris", stop=10 + i)["id"] for i in range(5)]
        page = client.get("/v1/datasets", params={"limit": 2}).json()
        assert [d["id"] for d in page["data"]] == ids[::-1][:2]
        assert page["has_more"] is True
        rest = client.get("/v1/datasets", params={"limit": 10, "after": ids[3]}).json()
        assert [d["id"] for d in rest["data"]] == ids[::-1][2:]
        assert rest["has_more"] is False

    def test_limit_out_of_range(self, client: TestClient) -> None:
        assert_problem(client.get("/v1/datasets", params={"limit": 0}), 422, "validation_error")
        assert_problem(client.get("/v1/datasets", params={"limit": 201}), 422, "validation_error")

    def test_unknown_cursor(self, client: TestClient) -> None:
        assert_problem(
            client.get("/v1/datasets", params={"after": "ds_nope"}), 404, "cursor_not_found"
        )

    def test_get_and_404(self, client: TestClient) -> None:
        created = builtin(client, "wine")
        assert client.get(f"/v1/datasets/{created['id']}").json() == created
        assert_problem(client.get("/v1/datasets/ds_missing"), 404, "dataset_not_found")

    def test_delete(self, client: TestClient) -> None:
        created = builtin(client, "wine")
        assert client.delete(f"/v1/datasets/{created['id']}").status_code == 204
        assert_problem(client.get(f"/v1/datasets/{created['id']}"), 404, "dataset_not_found")
        assert_problem(client.delete(f"/v1/datasets/{created['id']}"), 404, "dataset_not_found")

    def test_delete_in_use_is_409(self, client: TestClient) -> None:
        created = builtin(client, "iris")
        job = client.post(
            "/v1/jobs/source-training",
            json={"dataset_id": created["id"], "target_column": "target", "model_name": "m"},
        ).json()
        assert_problem(client.delete(f"/v1/datasets/{created['id']}"), 409, "dataset_in_use")
        client.post(f"/v1/jobs/{job['id']}/cancel")
        assert client.delete(f"/v1/datasets/{created['id']}").status_code == 204
