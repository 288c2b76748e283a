"""`graft serve --processes N`: several API processes on one port that answer as one.

Every request below goes over a fresh connection, so the kernel hands them to either
process; the access log's `pid` shows that both answered. Whichever process a request
lands on, it sees the alias move or key revocation committed just before through the other.
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.integration.conftest import (
    ADMIN_KEY,
    IRIS_INSTANCE,
    LiveServer,
    ServerFactory,
    train_tiny_versions,
)

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

PROCESSES = 2
FRESH_REQUESTS = 24


def fresh(
    server: LiveServer, method: str, path: str, key: str = ADMIN_KEY, **request: Any
) -> list[httpx2.Response]:
    """FRESH_REQUESTS requests, each on its own new connection, eight at a time."""

    def one(_: int) -> httpx2.Response:
        with httpx2.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60
        ) as client:
            return client.request(method, path, **request)

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(FRESH_REQUESTS)))


def serving_pids(server: LiveServer) -> set[int]:
    pids = set()
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{") and '"route":"/v1/models/{name}/predict"' in line:
            pids.add(json.loads(line)["pid"])
    return pids


def api_processes(server: LiveServer) -> int:
    """Children of `graft serve` that are uvicorn's API processes (not job workers)."""
    assert server.process is not None
    found = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = next(line for line in status.splitlines() if line.startswith("PPid:"))
        if int(parent.split()[1]) == server.process.pid and b"spawn_main" in command:
            found += 1
    return found


@pytest.fixture
def server(server_factory: ServerFactory) -> LiveServer:
    return server_factory(api_processes=PROCESSES, workers=1, access_log="true")


def test_alias_moves_and_revocations_reach_every_process_at_once(server: LiveServer) -> None:
    # One more child than API processes: the job worker, started once by the parent.
    assert api_processes(server) == PROCESSES + 1
    admin = server.client()
    train_tiny_versions(admin, {"iris": 2})
    for round_number, version in enumerate([1, 2, 1, 2]):
        moved = admin.put("/v1/models/iris/aliases/production", json={"version": version})
        assert moved.status_code == 200, moved.text
        answers = fresh(
            server,
            "POST",
            "/v1/models/iris/predict",
            json={"instances": [IRIS_INSTANCE]},
        )
        served = [r.json()["model"]["version"] for r in answers if r.status_code == 200]
        assert served == [version] * FRESH_REQUESTS, (round_number, served)

        created = admin.post(
            "/v1/keys", json={"name": f"app {round_number}", "scopes": ["read"]}
        ).json()
        assert {r.status_code for r in fresh(server, "GET", "/v1/models", created["secret"])} == {
            200
        }
        assert admin.delete(f"/v1/keys/{created['id']}").status_code == 204
        refused = fresh(server, "GET", "/v1/models", created["secret"])
        assert {r.status_code for r in refused} == {401}, round_number
        assert {r.json()["code"] for r in refused} == {"key_revoked"}
    admin.close()
    assert len(serving_pids(server)) == PROCESSES


def test_metrics_readiness_and_jobs_are_the_deployments(server: LiveServer) -> None:
    admin = server.client()
    train_tiny_versions(admin, {"counted": 1})
    before = admin.get("/metrics").text
    answers = fresh(
        server, "POST", "/v1/models/counted/predict", json={"instances": [IRIS_INSTANCE]}
    )
    assert {r.status_code for r in answers} == {200}
    # Whichever process answers the scrape counts the others' requests too.
    for _ in range(4):
        scraped = fresh(server, "GET", "/metrics")[0].text
        assert counter(scraped, 'graft_predictions_total{model="counted",version="1"}') == (
            FRESH_REQUESTS + counter(before, 'graft_predictions_total{model="counted",version="1"}')
        )
        route = 'graft_http_requests_total{method="POST",route="/v1/models/{name}/predict",'
        assert counter(scraped, route + 'status="200"}') >= FRESH_REQUESTS
    readiness = fresh(server, "GET", "/readyz")
    assert {r.status_code for r in readiness} == {200}
    assert {r.json()["checks"]["workers"]["alive"] for r in readiness} == {1}
    admin.close()


def test_stopping_the_parent_stops_every_process(server: LiveServer) -> None:
    assert server.process is not None
    children = api_processes(server)
    assert children == PROCESSES + 1
    server.stop()
    assert server.process.returncode is not None
    assert api_processes(server) == 0
    assert os.path.exists(server.data_dir / "graft.db") or server.database_url is not None


def counter(exposition: str, series: str) -> float:
    for line in exposition.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def listening_sockets(server: LiveServer) -> dict[int, set[str]]:
    """pid -> inodes of the sockets it holds that listen on the server's port."""
    listening = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port == server.port and fields[3] == "0A":  # TCP_LISTEN
                listening.add(fields[9])
    assert server.process is not None
    found: dict[int, set[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            links = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        held = {link[len("socket:[") : -1] for link in links if link.startswith("socket:[")}
        if held & listening:
            found[int(entry.name)] = held & listening
    return found


def test_each_api_process_accepts_from_a_socket_of_its_own(server: LiveServer) -> None:
    """SO_REUSEPORT: the kernel spreads new connections over one queue per API process, rather
    than every process racing to accept from one shared queue."""
    # The server answers once one process is up; the other may still be starting.
    deadline = time.monotonic() + 60
    holders = listening_sockets(server)
    while len(holders) < PROCESSES and time.monotonic() < deadline:
        time.sleep(0.2)
        holders = listening_sockets(server)
    assert len(holders) == PROCESSES, holders
    assert server.process is not None and server.process.pid not in holders
    inodes = [inode for held in holders.values() for inode in held]
    assert len(inodes) == len(set(inodes)) == PROCESSES
    # Both answer, over fresh connections.
    responses = fresh(server, "GET", "/healthz")
    assert all(r.status_code == 200 for r in responses)
