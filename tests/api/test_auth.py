"""The one door: keys, scopes, hosts, origins, rates, and the OpenAPI description of them."""

import logging
import re
import stat
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.routing import Mount, Route

from app.api.auth import PUBLIC_PATHS, required_scope
from app.config import Settings
from app.ids import utcnow
from app.main import create_app
from tests.helpers import assert_problem

ADMIN = "test-admin-key-0123456789abcdef0123456789"
SCOPES = ("read", "predict", "train", "admin")


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth": "enabled", "admin_key": SecretStr(ADMIN)})


@pytest.fixture
def app_client(auth_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(auth_settings), raise_server_exceptions=False) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def make_key(client: TestClient, *scopes: str, **fields: Any) -> dict[str, Any]:
    response = client.post(
        "/v1/keys", json={"name": "k", "scopes": list(scopes), **fields}, headers=bearer(ADMIN)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def concrete(path: str) -> str:
    """A path of the route with every parameter filled in."""
    path = path.replace("{version}", "1")
    return re.sub(r"\{[^}]+\}", "x", path)


def every_route(
    routes: list[Any], found: list[tuple[str, str]] | None = None
) -> list[tuple[str, str]]:
    """(method, concrete path) of every route, included routers and mounts too."""
    found = [] if found is None else found
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            every_route(included.routes, found)
        elif isinstance(route, Route):
            found += [(method, concrete(route.path)) for method in sorted(route.methods or [])]
        elif isinstance(route, Mount):
            found.append(("GET", route.path + "/swagger-ui.css"))
    return found


class TestTheDoor:
    def test_every_route_but_the_public_ones_needs_a_key_and_its_scope(
        self, app_client: TestClient
    ) -> None:
        routes = every_route(app_client.app.routes)  # type: ignore[attr-defined]
        assert len(routes) > 30
        keys = {
            needed: make_key(app_client, *[s for s in SCOPES if s not in (needed, "admin")])
            for needed in SCOPES
        }
        checked = 0
        for method, path in routes:
            needed = required_scope(method, path)
            anonymous = app_client.request(method, path)
            if needed is None:
                assert anonymous.status_code != 401, f"{method} {path}"
                continue
            assert anonymous.status_code == 401, f"{method} {path}: {anonymous.status_code}"
            assert anonymous.headers["www-authenticate"].startswith("Bearer")
            assert_problem(anonymous, 401, "missing_key")
            lacking = keys[needed]
            refused = app_client.request(method, path, headers=bearer(lacking["secret"]))
            assert refused.status_code == 403, f"{method} {path} with {lacking['scopes']}"
            assert needed in assert_problem(refused, 403, "insufficient_scope")["detail"]
            checked += 1
        assert checked > 25

    def test_public_routes_answer_without_a_key(self, app_client: TestClient) -> None:
        for path in sorted(PUBLIC_PATHS):
            assert app_client.get(path).status_code == 200, path

    def test_the_predict_fast_lane_and_v2_and_streams_need_keys(
        self, app_client: TestClient
    ) -> None:
        body = {"instances": [[1, 2, 3, 4]]}
        assert_problem(app_client.post("/v1/models/m/predict", json=body), 401, "missing_key")
        assert app_client.post("/v2/models/m/infer", json={"inputs": []}).status_code == 401
        events = app_client.get("/v1/jobs/x/events", headers={"Accept": "text/event-stream"})
        assert events.status_code == 401
        assert app_client.get("/metrics").status_code == 401
        assert app_client.get("/v1/models/m/versions/1/weights").status_code == 401
        predict_key = make_key(app_client, "predict")["secret"]
        allowed = app_client.post("/v1/models/m/predict", json=body, headers=bearer(predict_key))
        assert_problem(allowed, 404, "model_not_found")

    def test_admin_implies_every_scope(self, app_client: TestClient) -> None:
        admin = make_key(app_client, "admin")["secret"]
        assert app_client.get("/v1/models", headers=bearer(admin)).status_code == 200
        created = app_client.post(
            "/v1/datasets/builtin", json={"name": "iris"}, headers=bearer(admin)
        )
        assert created.status_code == 201

    def test_bad_headers(self, app_client: TestClient) -> None:
        for header in ("Basic abc", "Bearer", "Bearer ", "bearer nope", "nonsense"):
            response = app_client.get("/v1/models", headers={"Authorization": header})
            assert response.status_code == 401, header
        assert_problem(
            app_client.get("/v1/models", headers=bearer("graft_unknown")), 401, "invalid_key"
        )


class TestKeys:
    def test_secret_shown_once_and_never_listed(self, app_client: TestClient) -> None:
        created = make_key(app_client, "predict", "read")
        assert created["secret"].startswith("graft_") and len(created["secret"]) > 40
        assert created["scopes"] == ["predict", "read"]
        assert created["secret"].startswith(created["prefix"])
        listed = app_client.get("/v1/keys", headers=bearer(ADMIN)).json()["data"]
        assert created["id"] in [k["id"] for k in listed]
        assert all("secret" not in k for k in listed)
        one = app_client.get(f"/v1/keys/{created['id']}", headers=bearer(ADMIN)).json()
        assert "secret" not in one and one["name"] == "k"

    def test_the_database_never_holds_a_secret(
        self, app_client: TestClient, auth_settings: Settings
    ) -> None:
        secrets = [make_key(app_client, "read")["secret"] for _ in range(3)]
        app_client.get("/v1/models", headers=bearer(secrets[0]))
        stored = b"".join(
            p.read_bytes() for p in auth_settings.data_dir.glob("graft.db*") if p.is_file()
        )
        for secret in [*secrets, ADMIN]:
            assert secret.encode() not in stored

    def test_revocation_takes_effect_on_the_next_request(self, app_client: TestClient) -> None:
        key = make_key(app_client, "read")
        assert app_client.get("/v1/models", headers=bearer(key["secret"])).status_code == 200
        revoked = app_client.delete(f"/v1/keys/{key['id']}", headers=bearer(ADMIN))
        assert revoked.status_code == 204
        assert_problem(
            app_client.get("/v1/models", headers=bearer(key["secret"])), 401, "key_revoked"
        )
        assert_problem(
            app_client.get(f"/v1/keys/{key['id']}", headers=bearer(ADMIN)), 404, "key_revoked"
        )
        ids = {k["id"] for k in app_client.get("/v1/keys", headers=bearer(ADMIN)).json()["data"]}
        assert key["id"] not in ids
        audit = app_client.get("/v1/keys?include_revoked=true", headers=bearer(ADMIN)).json()
        revoked = {k["id"]: k for k in audit["data"]}[key["id"]]
        assert revoked["revoked_at"] is not None
        assert app_client.delete(f"/v1/keys/{key['id']}", headers=bearer(ADMIN)).status_code == 204
        assert_problem(
            app_client.delete("/v1/keys/key_nope", headers=bearer(ADMIN)), 404, "key_not_found"
        )

    def test_the_environment_admin_key_cannot_be_revoked(self, app_client: TestClient) -> None:
        assert_problem(
            app_client.delete("/v1/keys/key_env_admin", headers=bearer(ADMIN)),
            409,
            "key_from_environment",
        )

    def test_expired_keys_are_401(self, app_client: TestClient) -> None:
        # Long enough that making the key on a loaded machine does not use it all up.
        expires = utcnow() + timedelta(seconds=3)
        key = make_key(app_client, "read", expires_at=expires.isoformat())
        assert app_client.get("/v1/models", headers=bearer(key["secret"])).status_code == 200
        time.sleep(max(0.0, (expires - utcnow()).total_seconds()) + 0.1)
        assert_problem(
            app_client.get("/v1/models", headers=bearer(key["secret"])), 401, "key_expired"
        )

    @pytest.mark.parametrize(
        "body",
        [
            {"name": "k", "scopes": []},
            {"name": "k", "scopes": ["root"]},
            {"name": "", "scopes": ["read"]},
            {"name": "k", "scopes": ["read"], "expires_at": "2000-01-01T00:00:00Z"},
            {"name": "k", "scopes": ["read"], "expires_at": "2999-01-01T00:00:00"},
        ],
    )
    def test_invalid_key_requests_are_422(
        self, app_client: TestClient, body: dict[str, Any]
    ) -> None:
        response = app_client.post("/v1/keys", json=body, headers=bearer(ADMIN))
        assert response.status_code == 422, response.text

    def test_last_use_is_recorded(self, app_client: TestClient) -> None:
        key = make_key(app_client, "read")
        app_client.get("/v1/models", headers=bearer(key["secret"]))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            one = app_client.get(f"/v1/keys/{key['id']}", headers=bearer(ADMIN)).json()
            if one["last_used_at"] is not None:
                return
            time.sleep(0.05)
        pytest.fail("last_used_at was never written")


class TestFirstAdminKey:
    def test_generated_once_into_a_private_file_and_never_logged(
        self, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        enabled = settings.model_copy(update={"auth": "enabled", "admin_key": None})
        caplog.set_level(logging.WARNING)
        with TestClient(create_app(enabled)) as client:
            path: Path = settings.data_dir.resolve() / "admin-key"
            secret = path.read_text().strip()
            assert stat.S_IMODE(path.stat().st_mode) == 0o600
            assert str(path) in caplog.text and secret not in caplog.text
            assert client.get("/v1/models", headers=bearer(secret)).status_code == 200
        # A second start keeps the first key.
        with TestClient(create_app(enabled)) as client:
            assert path.read_text().strip() == secret
            assert client.get("/v1/models", headers=bearer(secret)).status_code == 200

    def test_auth_disabled_warns_and_asks_for_nothing(
        self, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING)
        with TestClient(create_app(settings.model_copy(update={"auth": "disabled"}))) as client:
            assert client.get("/v1/models").status_code == 200
        assert "NO API KEYS ARE CHECKED" in caplog.text


class TestHostsAndOrigins:
    def test_a_foreign_host_is_400_but_probes_answer(self, app_client: TestClient) -> None:
        response = app_client.get("/v1/models", headers={"Host": "evil.example", **bearer(ADMIN)})
        assert_problem(response, 400, "host_not_allowed")
        assert app_client.get("/healthz", headers={"Host": "10.0.0.7:8000"}).status_code == 200

    def test_default_hosts_are_the_local_names_and_the_bound_address(
        self, settings: Settings
    ) -> None:
        local = settings.model_copy(update={"allowed_hosts": None, "host": "192.0.2.10"})
        with TestClient(create_app(local), base_url="http://localhost:8000") as client:
            for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "192.0.2.10:8000"):
                assert client.get("/v1/models", headers={"Host": host}).status_code == 200, host
            assert client.get("/v1/models", headers={"Host": "graft.evil"}).status_code == 400

    def test_cors_is_off_unless_origins_are_set(self, settings: Settings) -> None:
        origin = {"Origin": "https://app.example"}
        with TestClient(create_app(settings)) as client:
            assert (
                "access-control-allow-origin"
                not in client.get("/v1/models", headers=origin).headers
            )
        allowed = settings.model_copy(update={"cors_origins": ["https://app.example"]})
        with TestClient(create_app(allowed)) as client:
            response = client.get("/v1/models", headers=origin)
            assert response.headers["access-control-allow-origin"] == "https://app.example"
            preflight = client.options(
                "/v1/models",
                headers={
                    **origin,
                    "Access-Control-Request-Method": "GET",
                    "Access-Control-Request-Headers": "authorization",
                },
            )
            assert preflight.status_code == 200


class TestRateLimit:
    def test_token_bucket_per_key_with_retry_after(self, auth_settings: Settings) -> None:
        limited = auth_settings.model_copy(
            update={"rate_limit_per_second": 2.0, "rate_limit_burst": 3}
        )
        with TestClient(create_app(limited)) as client:
            key = make_key(client, "read")["secret"]
            other = make_key(client, "read")["secret"]
            codes = [client.get("/v1/models", headers=bearer(key)).status_code for _ in range(4)]
            assert codes == [200, 200, 200, 429]
            response = client.get("/v1/models", headers=bearer(key))
            problem = assert_problem(response, 429, "rate_limited")
            assert int(response.headers["retry-after"]) >= 1
            assert "GRAFT_RATE_LIMIT_PER_SECOND" in problem["detail"]
            assert client.get("/v1/models", headers=bearer(other)).status_code == 200
            # Admin keys are not limited by default; /healthz never is.
            assert all(
                client.get("/v1/models", headers=bearer(ADMIN)).status_code == 200
                for _ in range(10)
            )
            assert client.get("/healthz").status_code == 200
            time.sleep(0.6)
            assert client.get("/v1/models", headers=bearer(key)).status_code == 200


class TestOpenAPI:
    def test_bearer_scheme_and_each_operations_scope(self, app_client: TestClient) -> None:
        document = app_client.get("/openapi.json").json()
        assert document["components"]["securitySchemes"]["bearerAuth"] == {
            "type": "http",
            "scheme": "bearer",
            "description": document["components"]["securitySchemes"]["bearerAuth"]["description"],
        }
        paths = document["paths"]
        assert paths["/healthz"]["get"]["security"] == []
        models = paths["/v1/models"]["get"]
        assert models["security"] == [{"bearerAuth": []}]
        assert models["x-required-scope"] == "read"
        assert {"401", "403", "429"} <= set(models["responses"])
        assert paths["/v1/models/{name}/predict"]["post"]["x-required-scope"] == "predict"
        assert paths["/v1/keys"]["post"]["x-required-scope"] == "admin"
        assert paths["/v1/datasets"]["post"]["x-required-scope"] == "train"


class TestJobQuotas:
    def _job(self, client: TestClient, secret: str, dataset_id: str, **headers: str) -> Any:
        return client.post(
            "/v1/jobs/source-training",
            json={
                "dataset_id": dataset_id,
                "target_column": "target",
                "model_name": "m",
                "hyperparameters": {"epochs": 2},
            },
            headers={**bearer(secret), **headers},
        )

    def test_active_jobs_per_key_and_the_queue_bound(self, auth_settings: Settings) -> None:
        bounded = auth_settings.model_copy(
            update={"max_active_jobs_per_key": 2, "max_queued_jobs": 3}
        )
        with TestClient(create_app(bounded)) as client:
            first, second = make_key(client, "train"), make_key(client, "train")
            dataset = client.post(
                "/v1/datasets/builtin", json={"name": "iris"}, headers=bearer(first["secret"])
            ).json()
            assert dataset["created_by"] == first["id"]
            jobs = [self._job(client, first["secret"], dataset["id"]) for _ in range(2)]
            assert [j.status_code for j in jobs] == [202, 202]
            assert jobs[0].json()["created_by"] == first["id"]
            over = self._job(client, first["secret"], dataset["id"])
            problem = assert_problem(over, 429, "too_many_active_jobs")
            assert "GRAFT_MAX_ACTIVE_JOBS_PER_KEY=2" in problem["detail"]
            assert int(over.headers["retry-after"]) > 0
            assert self._job(client, second["secret"], dataset["id"]).status_code == 202
            full = self._job(client, second["secret"], dataset["id"])
            assert "GRAFT_MAX_QUEUED_JOBS=3" in assert_problem(full, 429, "queue_full")["detail"]
            # An ended job frees its slot.
            cancel = client.post(
                f"/v1/jobs/{jobs[0].json()['id']}/cancel", headers=bearer(first["secret"])
            )
            assert cancel.status_code == 202
            assert self._job(client, first["secret"], dataset["id"]).status_code == 202

    def test_an_idempotency_key_belongs_to_the_api_key_that_used_it(
        self, app_client: TestClient
    ) -> None:
        first, second = make_key(app_client, "train"), make_key(app_client, "train")
        dataset = app_client.post(
            "/v1/datasets/builtin", json={"name": "iris"}, headers=bearer(ADMIN)
        ).json()
        once = self._job(app_client, first["secret"], dataset["id"], **{"Idempotency-Key": "k1"})
        again = self._job(app_client, first["secret"], dataset["id"], **{"Idempotency-Key": "k1"})
        assert once.status_code == again.status_code == 202
        assert again.headers["idempotent-replayed"] == "true"
        stolen = self._job(app_client, second["secret"], dataset["id"], **{"Idempotency-Key": "k1"})
        problem = assert_problem(stolen, 422, "idempotency_key_reused")
        assert once.json()["id"] not in problem["detail"]
