"""The CLI's HTTP layer: problem documents become ApiError, and a job's event stream is
followed across dropped connections without losing or repeating an event."""

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.client.http import ApiError, GraftClient, Unreachable


def sse(seq: int, status: str | None = None, kind: str = "metrics") -> bytes:
    data: dict[str, Any] = {"epoch": seq}
    if status is not None:
        kind, data = "status", {"status": status}
    payload = {"seq": seq, "type": kind, "message": f"event {seq}", "data": data}
    return f"id: {seq}\nevent: {kind}\ndata: {json.dumps(payload)}\n\n".encode()


class BrokenStream(httpx.SyncByteStream):
    """Sends some events, then the connection drops mid-stream."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        raise httpx.ReadError("connection reset by peer")


def client_with(handler: Any) -> GraftClient:
    client = GraftClient("http://graft.test", "key")
    client._http = httpx.Client(
        base_url="http://graft.test", transport=httpx.MockTransport(handler)
    )
    return client


def test_a_dropped_stream_resumes_after_the_last_event_seen() -> None:
    asked_after: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        asked_after.append(request.headers["Last-Event-ID"])
        headers = {"Content-Type": "text/event-stream"}
        if len(asked_after) == 1:
            return httpx.Response(
                200,
                headers=headers,
                stream=BrokenStream([sse(1), sse(2), b": keep-alive\n\n", sse(3)]),
            )
        if len(asked_after) == 2:
            # The server replays from Last-Event-ID; an event it sends twice is not shown twice.
            return httpx.Response(
                200, headers=headers, content=sse(3) + sse(4) + sse(5, "succeeded")
            )
        raise AssertionError("no request after the final status")

    with client_with(handler) as client:
        events = list(client.events("job_1", retry_wait=0))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert asked_after == ["0", "3"]
    assert events[-1].type == "status" and events[-1].data == {"status": "succeeded"}


def test_a_stream_that_cannot_come_back_gives_up_after_its_retries() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with client_with(handler) as client, pytest.raises(Unreachable, match="event stream lost"):
        list(client.events("job_1", retries=2, retry_wait=0))


def test_too_many_streams_waits_for_retry_after_then_resumes() -> None:
    calls: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            problem = {"code": "too_many_streams", "status": 429, "detail": "limit"}
            return httpx.Response(429, headers={"Retry-After": "0"}, json=problem)
        return httpx.Response(
            200, headers={"Content-Type": "text/event-stream"}, content=sse(1, "failed")
        )

    with client_with(handler) as client:
        assert [e.data["status"] for e in client.events("job_1", retry_wait=0)] == ["failed"]


def test_a_problem_document_becomes_an_api_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"code": "job_not_found", "status": 404, "title": "Not Found", "detail": "no job"}
        return httpx.Response(404, json=body, headers={"Content-Type": "application/problem+json"})

    with client_with(handler) as client, pytest.raises(ApiError) as raised:
        client.json("GET", "/v1/jobs/nope")
    assert raised.value.status == 404 and raised.value.code == "job_not_found"
    assert "no job" in str(raised.value)


def test_pages_follow_the_cursor_and_stop_at_the_limit() -> None:
    items = [{"id": f"ds_{n:03d}"} for n in range(450)]

    def handler(request: httpx.Request) -> httpx.Response:
        after = request.url.params.get("after")
        limit = int(request.url.params["limit"])
        start = 0 if after is None else next(i for i, d in enumerate(items) if d["id"] == after) + 1
        page = items[start : start + limit]
        return httpx.Response(200, json={"data": page, "has_more": start + limit < len(items)})

    with client_with(handler) as client:
        assert [d["id"] for d in client.pages("/v1/datasets", {}, None)] == [d["id"] for d in items]
        assert len(list(client.pages("/v1/datasets", {}, 230))) == 230
