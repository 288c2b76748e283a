"""The OpenAPI document says what the service does: statuses, media types, Allow, links.

schemathesis checks the same against a real server in CI (scripts/contract); these tests
pin each rule so that a change that breaks one fails here, fast, with a readable message.
"""

from typing import Any

from fastapi.testclient import TestClient

from tests.helpers import assert_problem, builtin

PROBLEM = "application/problem+json"


def document(client: TestClient) -> dict[str, Any]:
    doc: dict[str, Any] = client.get("/openapi.json").json()
    return doc


def operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in doc["paths"].items()
        for method, operation in item.items()
    ]


class TestErrorsAreDocumented:
    def test_every_v1_error_is_a_problem_and_only_that(self, client: TestClient) -> None:
        for path, method, operation in operations(document(client)):
            if path.startswith("/v2"):
                continue
            for status, response in operation["responses"].items():
                if status[0] in "45":
                    assert list(response["content"]) == [PROBLEM], (method, path, status)
                    schema = response["content"][PROBLEM]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Problem"}

    def test_the_statuses_the_service_adds_are_on_each_operation(self, client: TestClient) -> None:
        doc = document(client)
        upload = doc["paths"]["/v1/datasets"]["post"]["responses"]
        assert {"400", "401", "403", "409", "413", "415", "422", "429", "500", "503"} <= set(upload)
        listing = doc["paths"]["/v1/jobs"]["get"]["responses"]
        assert {"400", "401", "403", "404", "422", "429"} <= set(listing)
        assert "413" not in listing  # no body, no body limit
        health = doc["paths"]["/healthz"]["get"]
        assert health["security"] == [] and "401" not in health["responses"]

    def test_fastapi_validation_body_is_gone(self, client: TestClient) -> None:
        schemas = document(client)["components"]["schemas"]
        assert "HTTPValidationError" not in schemas
        problem = schemas["Problem"]["properties"]
        assert {"type", "title", "status", "detail", "code", "errors", "instance"} <= set(problem)

    def test_v2_errors_are_the_protocols(self, client: TestClient) -> None:
        infer = document(client)["paths"]["/v2/models/{name}/infer"]["post"]["responses"]
        assert "422" not in infer
        assert "application/json" in infer["400"]["content"]
        assert infer["404"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")


class TestParameters:
    def test_optional_parameters_are_never_null(self, client: TestClient) -> None:
        for path, method, operation in operations(document(client)):
            for parameter in operation.get("parameters", []):
                text = str(parameter["schema"])
                assert "'null'" not in text, (method, path, parameter)

    def test_operation_ids_are_the_route_names(self, client: TestClient) -> None:
        ids = {op["operationId"] for _, _, op in operations(document(client))}
        assert {"create_dataset", "get_job", "predict", "infer"} <= ids

    def test_upload_file_part_is_binary(self, client: TestClient) -> None:
        doc = document(client)
        form = doc["paths"]["/v1/datasets"]["post"]["requestBody"]["content"]
        reference = form["multipart/form-data"]["schema"]["$ref"].rpartition("/")[2]
        fields = doc["components"]["schemas"][reference]["properties"]
        assert fields["file"]["format"] == "binary"
        assert "anyOf" not in fields["name"]


class TestAllow:
    def test_405_lists_every_method_of_the_path(self, client: TestClient) -> None:
        response = client.options("/v1/datasets")
        assert_problem(response, 405, "method_not_allowed")
        assert response.headers["allow"] == "GET, POST"
        one = client.request("PUT", "/v1/datasets/ds_x")
        assert one.status_code == 405
        assert set(one.headers["allow"].split(", ")) == {"DELETE", "GET", "PATCH"}
        alias = client.options("/v1/models/m/aliases/a")
        assert set(alias.headers["allow"].split(", ")) == {"DELETE", "PUT"}
        # A literal path is its own resource, though /v1/datasets/{dataset_id} matches it too.
        assert client.options("/v1/datasets/builtin").headers["allow"] == "POST"
        assert client.options("/v1/jobs/fine-tuning").headers["allow"] == "POST"

    def test_allow_agrees_with_the_document_for_every_path(self, client: TestClient) -> None:
        for template, item in document(client)["paths"].items():
            path = template.replace("{", "x").replace("}", "")
            allowed = client.request("TRACE", path).headers.get("allow", "")
            documented = {m.upper() for m in item}
            assert set(allowed.split(", ")) == documented, (template, allowed)

    def test_405_under_v2_keeps_the_protocol_body(self, client: TestClient) -> None:
        response = client.delete("/v2/models/m/infer")
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert list(response.json()) == ["error"]


class TestSchemaAndValidationAgree:
    def test_booleans_are_not_numbers(self, client: TestClient) -> None:
        for body in (
            {"name": "iris", "shuffle_seed": False},
            {"name": "iris", "start": True},
            {"name": "iris", "as_images": 0},
        ):
            assert_problem(client.post("/v1/datasets/builtin", json=body), 422, "validation_error")

    def test_unknown_cursor_is_404_and_empty_cursor_is_invalid(self, client: TestClient) -> None:
        builtin(client)
        assert_problem(
            client.get("/v1/datasets", params={"after": "ds_gone"}), 404, "cursor_not_found"
        )
        assert_problem(client.get("/v1/jobs", params={"after": ""}), 422, "validation_error")

    def test_null_rows_are_refused_as_the_schema_says(self, client: TestClient) -> None:
        body = {"instances": [[1, 2, 3, 4]], "records": None}
        assert_problem(client.post("/v1/models/m/predict", json=body), 422, "validation_error")

    def test_predict_body_schema_is_exactly_one_list_of_rows(self, client: TestClient) -> None:
        operation = document(client)["paths"]["/v1/models/{name}/predict"]["post"]
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        assert schema["minProperties"] == schema["maxProperties"] == 1
        assert schema["properties"]["instances"]["type"] == "array"
        assert schema["properties"]["instances"]["minItems"] == 1


class TestLinks:
    def test_creating_operations_link_to_their_users(self, client: TestClient) -> None:
        doc = document(client)
        upload = doc["paths"]["/v1/datasets"]["post"]["responses"]["201"]["links"]
        assert upload["GetDataset"]["operationId"] == "get_dataset"
        assert upload["TrainOnIt"]["requestBody"] == {"dataset_id": "$response.body#/id"}
        job = doc["paths"]["/v1/jobs/fine-tuning"]["post"]["responses"]["202"]["links"]
        assert job["GetJob"]["parameters"] == {"job_id": "$response.body#/id"}
        got = doc["paths"]["/v1/jobs/{job_id}"]["get"]["responses"]["200"]["links"]
        assert got["GetVersion"]["parameters"]["version"] == "$response.body#/result/version"
        version = doc["paths"]["/v1/models/{name}/versions/{version}"]["get"]["responses"]
        assert version["200"]["links"]["Predict"]["operationId"] == "predict"
