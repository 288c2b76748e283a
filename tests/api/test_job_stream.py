"""Live job events over Server-Sent Events, through a real HTTP server."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx2
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from app.services.job_streams import JobEventHub
from tests.helpers import FAST, assert_problem, run_pending_jobs

SSE = {"Accept": "text/event-stream"}


@dataclass
class Live:
    url: str
    app: FastAPI

    @property
    def hub(self) -> JobEventHub:
        hub: JobEventHub = self.app.state.event_hub
        return hub


@dataclass
class Stream:
    events: list[dict[str, Any]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    ended: bool = False


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    fast = settings.model_copy(
        update={"events_poll_seconds": 0.05, "events_keepalive_seconds": 0.3}
    )
    app = create_app(fast)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    yield Live(f"http://127.0.0.1:{port}", app)
    server.should_exit = True
    thread.join(30)


def read(lines: Iterator[str], stream: Stream, *, stop_after: int | None = None) -> Stream:
    """Parse SSE lines into `stream` until the server ends it or `stop_after` events came."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            stream.comments.append(line)
        elif line:
            name, _, value = line.partition(": ")
            fields[name] = value
        elif "data" in fields:
            event = {"id": int(fields["id"]), "event": fields["event"], **_json(fields["data"])}
            stream.events.append(event)
            fields = {}
            if stop_after is not None and len(stream.events) >= stop_after:
                return stream
        else:
            fields = {}
    stream.ended = True
    return stream


def _json(text: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(text)
    return {"payload": data}


def submit(http: httpx2.Client, epochs: int) -> str:
    dataset = http.post("/v1/datasets/builtin", json={"name": "iris"}).json()
    response = http.post(
        "/v1/jobs/source-training",
        json={
            "dataset_id": dataset["id"],
            "target_column": "target",
            "model_name": "watched",
            "hyperparameters": {**FAST, "epochs": epochs},
        },
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def stored_events(http: httpx2.Client, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = http.get(
        f"/v1/jobs/{job_id}/events", params={"limit": 200}
    ).json()["data"]
    return events


def run_in_background(database: Database) -> threading.Thread:
    thread = threading.Thread(target=run_pending_jobs, args=(database,), daemon=True)
    thread.start()
    return thread


@pytest.mark.postgres
def test_stream_follows_a_running_job_and_ends_at_its_final_status(
    live: Live, database: Database
) -> None:
    with httpx2.Client(base_url=live.url, timeout=60) as http:
        job_id = submit(http, epochs=15)
        stream = Stream()
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["cache-control"] == "no-cache"
            lines = response.iter_lines()
            read(lines, stream, stop_after=1)  # "job queued": nothing has run yet
            worker = run_in_background(database)
            read(lines, stream)
        worker.join(60)
        assert stream.ended
        stored = stored_events(http, job_id)
    assert [e["payload"] for e in stream.events] == stored
    assert [e["id"] for e in stream.events] == list(range(1, len(stored) + 1))
    assert all(e["event"] == e["payload"]["type"] for e in stream.events)
    epochs = [e["payload"]["data"]["epoch"] for e in stream.events if e["event"] == "metrics"]
    assert epochs == list(range(1, 16))
    assert stream.events[-1]["payload"]["data"]["status"] == "succeeded"


@pytest.mark.postgres
def test_reconnect_with_last_event_id_misses_nothing_and_repeats_nothing(
    live: Live, database: Database
) -> None:
    with httpx2.Client(base_url=live.url, timeout=60) as http:
        job_id = submit(http, epochs=40)
        worker = run_in_background(database)
        first = Stream()
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as response:
            read(response.iter_lines(), first, stop_after=6)
        assert not first.ended  # the client hung up mid-stream
        resumed = Stream()
        last_id = str(first.events[-1]["id"])
        with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": last_id}
        ) as response:
            read(response.iter_lines(), resumed)
        worker.join(60)
        stored = stored_events(http, job_id)
    assert resumed.ended
    seen = [e["id"] for e in first.events + resumed.events]
    assert seen == [e["seq"] for e in stored] == list(range(1, len(stored) + 1))
    assert resumed.events[-1]["payload"]["data"]["status"] == "succeeded"


def test_stream_of_a_finished_job_replays_after_the_cursor_and_ends(
    live: Live, database: Database
) -> None:
    with httpx2.Client(base_url=live.url, timeout=30) as http:
        job_id = submit(http, epochs=3)
        run_pending_jobs(database)
        final = stored_events(http, job_id)[-1]["seq"]
        tail = Stream()
        with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", params={"after": final - 2}, headers=SSE
        ) as response:
            read(response.iter_lines(), tail)
        caught_up = Stream()
        with http.stream(
            "GET", f"/v1/jobs/{job_id}/events", headers={**SSE, "Last-Event-ID": str(final)}
        ) as response:
            read(response.iter_lines(), caught_up)
    assert tail.ended and [e["id"] for e in tail.events] == [final - 1, final]
    assert caught_up.ended and caught_up.events == []


def test_idle_stream_sends_keep_alives_and_ends_when_the_job_is_cancelled(live: Live) -> None:
    with httpx2.Client(base_url=live.url, timeout=30) as http:
        job_id = submit(http, epochs=5)  # no worker: it stays queued
        stream = Stream()
        with http.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as response:
            lines = response.iter_lines()
            read(lines, stream, stop_after=1)
            assert next(lines) == ": keep-alive"
            assert next(lines) == ""
            http.post(f"/v1/jobs/{job_id}/cancel")
            read(lines, stream)
    assert stream.ended
    assert [e["payload"]["data"]["status"] for e in stream.events] == ["queued", "cancelled"]


def test_many_watchers_share_one_poller(live: Live, database: Database) -> None:
    watchers = 12
    with httpx2.Client(base_url=live.url, timeout=60) as http:
        job_id = submit(http, epochs=5)
        streams = [Stream() for _ in range(watchers)]

        def watch(stream: Stream) -> None:
            with (
                httpx2.Client(base_url=live.url, timeout=60) as own,
                own.stream("GET", f"/v1/jobs/{job_id}/events", headers=SSE) as response,
            ):
                read(response.iter_lines(), stream)

        threads = [threading.Thread(target=watch, args=(s,), daemon=True) for s in streams]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while live.hub.watchers() < watchers:
            assert time.monotonic() < deadline, live.hub.watchers()
            time.sleep(0.02)
        assert live.hub.watched_jobs() == 1
        run_pending_jobs(database)
        for thread in threads:
            thread.join(60)
        stored = stored_events(http, job_id)
    assert all(s.ended and [e["payload"] for e in s.events] == stored for s in streams)
    deadline = time.monotonic() + 5
    while live.hub.watched_jobs():  # the last watcher to leave stops the poller
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_stream_of_an_unknown_job_is_404(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_nope/events", headers=SSE)
    assert_problem(response, 404, "job_not_found")


def test_malformed_last_event_id_is_422(client: TestClient) -> None:
    response = client.get("/v1/jobs/job_nope/events", headers={**SSE, "Last-Event-ID": "x"})
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["header", "Last-Event-ID"]
