"""Keys across processes: a key made or revoked through one `graft serve` (or the CLI) is
honoured by another on SQLite on its very next request (a counter file beside the database),
and on PostgreSQL once the NOTIFY arrives, milliseconds after the commit (the README says so;
inside one `graft serve --processes N`, tests/integration/test_processes.py holds it to the
very next request on both databases)."""

import subprocess
import sys
import time

import httpx2
import pytest

from tests.integration.conftest import ADMIN_KEY, LiveServer, ServerFactory

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def as_key(server: LiveServer, secret: str) -> httpx2.Client:
    return httpx2.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30
    )


def cli(server: LiveServer, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", *args],
        env=server.environment(),
        cwd=server.data_dir,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return done.stdout


# How long PostgreSQL may take to deliver a NOTIFY to another instance on a loaded CI machine
# (each request checks the listening connection for it: in practice the next request counts).
NOTIFY_GRACE_SECONDS = 2.0


def refused_soon(client: httpx2.Client, postgres: bool) -> httpx2.Response:
    """The next answer, or on PostgreSQL the first refusal within the NOTIFY's grace."""
    deadline = time.monotonic() + (NOTIFY_GRACE_SECONDS if postgres else 0.0)
    response = client.get("/v1/models")
    while response.status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.01)
        response = client.get("/v1/models")
    return response


def test_revocation_reaches_every_process_at_once(
    server_factory: ServerFactory, db_backend: str
) -> None:
    first, second = server_factory(), server_factory()
    admin = first.client()
    for round_number in range(10):
        created = admin.post(
            "/v1/keys", json={"name": f"app {round_number}", "scopes": ["read"]}
        ).json()
        other = as_key(second, created["secret"])
        # Made in the first process, honoured by the second on its next request.
        assert other.get("/v1/models").status_code == 200, round_number
        assert admin.delete(f"/v1/keys/{created['id']}").status_code == 204
        refused = refused_soon(other, db_backend == "postgresql")
        assert refused.status_code == 401, (round_number, refused.text)
        assert refused.json()["code"] == "key_revoked"
        other.close()


def test_keys_made_and_revoked_on_the_command_line(
    server_factory: ServerFactory, db_backend: str
) -> None:
    first, second = server_factory(), server_factory()
    output = cli(first, "create", "--name", "batch job", "--scope", "predict", "--scope", "read")
    key_id = output.split()[1]
    secret = output.strip().splitlines()[-1]
    assert secret.startswith("graft_")
    for server in (first, second):
        with as_key(server, secret) as client:
            assert client.get("/v1/models").status_code == 200
    assert key_id in cli(first, "list")
    assert secret not in cli(first, "list")
    cli(first, "revoke", key_id)
    for server in (first, second):
        with as_key(server, secret) as client:
            assert refused_soon(client, db_backend == "postgresql").status_code == 401
    with first.client() as admin:
        listed = {k["id"]: k for k in admin.get("/v1/keys?include_revoked=true").json()["data"]}
    assert listed[key_id]["revoked_at"] is not None
    assert ADMIN_KEY not in str(listed)
