from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app
from tests.helpers import assert_problem


class TestHealth:
    def test_healthz(self, client: TestClient) -> None:
        assert client.get("/healthz").json() == {"status": "ok"}

    def test_readyz_ready(self, client: TestClient) -> None:
        body = client.get("/readyz").json()
        assert body["status"] == "ready"
        assert body["checks"]["schema"]["current"] == body["checks"]["schema"]["head"]

    def test_readyz_unmigrated_database_is_503(self, tmp_path: Path) -> None:
        settings = Settings(data_dir=tmp_path, workers=0)
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            problem = assert_problem(client.get("/readyz"), 503, "not_ready")
            assert "graft migrate" in problem["detail"]

    def test_readyz_with_celery_and_no_broker_is_503(self, settings: Settings) -> None:
        # Nothing listens on port 1: the broker is unreachable, not misconfigured.
        celery = settings.model_copy(
            update={"executor": "celery", "broker_url": "redis://127.0.0.1:1/0"}
        )
        with TestClient(create_app(celery), raise_server_exceptions=False) as client:
            problem = assert_problem(client.get("/readyz"), 503, "not_ready")
            assert "Celery broker is unreachable" in problem["detail"]

    def test_celery_executor_without_a_broker_is_a_settings_error(self) -> None:
        with pytest.raises(ValueError, match="GRAFT_BROKER_URL"):
            Settings(executor="celery")


class TestProblems:
    def test_unknown_route(self, client: TestClient) -> None:
        problem = assert_problem(client.get("/v1/nothing"), 404, "not_found")
        assert "/v1/nothing" in problem["detail"]

    def test_method_not_allowed(self, client: TestClient) -> None:
        assert_problem(client.delete("/v1/jobs"), 405, "method_not_allowed")

    def test_oversized_json_body_is_413(self, settings: Settings) -> None:
        small = settings.model_copy(update={"max_request_bytes": 100})
        with TestClient(create_app(small), raise_server_exceptions=False) as client:
            response = client.post("/v1/models/m/predict", json={"instances": [[1.0] * 100]})
            assert_problem(response, 413, "request_too_large")


class TestDocs:
    def test_docs_use_local_assets(self, client: TestClient) -> None:
        html = client.get("/docs").text
        assert "/docs-assets/swagger-ui-bundle.js" in html
        assert "cdn" not in html.lower()
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        assert client.get("/docs-assets/swagger-ui.css").status_code == 200

    def test_redoc_uses_local_assets(self, client: TestClient) -> None:
        html = client.get("/redoc").text
        assert "/docs-assets/redoc.standalone.js" in html
        assert "cdn" not in html.lower() and "fonts.googleapis" not in html
        assert client.get("/docs-assets/redoc.standalone.js").status_code == 200

    def test_openapi_has_tags_summaries_and_examples(self, client: TestClient) -> None:
        spec = client.get("/openapi.json").json()
        paths = spec["paths"]
        for path in [
            "/v1/datasets",
            "/v1/datasets/builtin",
            "/v1/jobs/source-training",
            "/v1/jobs/fine-tuning",
            "/v1/jobs/{job_id}/cancel",
            "/v1/jobs/{job_id}/events",
            "/v1/models/{name}/versions/{version}/weights",
            "/v1/models/{name}/aliases/{alias}",
            "/v1/models/{name}/predict",
        ]:
            assert path in paths, path
            for operation in paths[path].values():
                assert operation["summary"] and operation["tags"]
        schemas = spec["components"]["schemas"]
        assert schemas["SourceTrainingCreate"]["examples"]
        assert schemas["FineTuningCreate"]["examples"]
        # The predict route reads its body raw, so its schema is inlined (openapi_extra).
        predict = paths["/v1/models/{name}/predict"]["post"]
        assert predict["requestBody"]["content"]["application/json"]["schema"]["examples"]
        assert (
            "PredictResponse"
            in predict["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
        )
        problem = paths["/v1/datasets/{dataset_id}"]["get"]["responses"]["404"]
        assert "application/problem+json" in problem["content"]
