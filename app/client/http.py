"""A small synchronous client for Graft's HTTP API: JSON in and out, problem+json errors
raised as `ApiError`, and a job's Server-Sent Events followed across dropped connections."""

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import httpx

DEFAULT_URL = "http://127.0.0.1:8000"


class ApiError(Exception):
    """The service answered with an error: its status and problem document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.code = str(problem.get("code") or f"http_{status}")
        detail = problem.get("detail") or problem.get("title") or f"HTTP {status}"
        super().__init__(f"{self.code}: {detail}")


class Unreachable(Exception):
    """No answer from the service (refused, timed out, or it broke the connection)."""


@dataclass
class Event:
    """One of a job's events: `seq`, `type` (status, metrics, log, warning), `data`."""

    seq: int
    type: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


class GraftClient:
    def __init__(self, url: str, key: str | None, *, timeout: float = 30.0) -> None:
        headers = {"User-Agent": "graft-cli"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "GraftClient":
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.url}: {exc or type(exc).__name__}") from exc
        if response.status_code >= 400:
            raise ApiError(response.status_code, _problem(response))
        return response

    def download(self, path: str, target: Callable[[httpx.Response], BinaryIO]) -> int:
        """Stream a response body into the file `target` opens (given the response, for its
        headers); returns the bytes written. Nothing is opened for a refusal."""
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _problem(response))
                size = 0
                with target(response) as file:
                    for piece in response.iter_bytes():
                        file.write(piece)
                        size += len(piece)
                return size
        except httpx.TransportError as exc:
            raise Unreachable(f"{self.url}: {exc or type(exc).__name__}") from exc

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        return response.json() if response.content else None

    def pages(
        self,
        path: str,
        params: dict[str, Any],
        limit: int | None,
        cursor: Callable[[Any], Any] = lambda item: item["id"] if "id" in item else item["name"],
    ) -> Iterator[Any]:
        """Every item of a list, page after page (at most `limit` items when given);
        `cursor` reads the `after` of the next page off the last item."""
        after = None
        seen = 0
        while True:
            page_size = 200 if limit is None else max(1, min(200, limit - seen))
            query = {**params, "limit": page_size}
            if after is not None:
                query["after"] = after
            page = self.json("GET", path, params=query)
            for item in page["data"]:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not page["has_more"] or not page["data"]:
                return
            after = cursor(page["data"][-1])

    def upload(
        self,
        path: Path,
        name: str | None,
        tags: dict[str, str] | None = None,
        description: str | None = None,
    ) -> Any:
        media = {
            ".csv": "text/csv",
            ".parquet": "application/vnd.apache.parquet",
            ".jsonl": "application/jsonl",
            ".ndjson": "application/jsonl",
            ".npz": "application/octet-stream",
        }.get(path.suffix.lower(), "application/octet-stream")
        with path.open("rb") as file:
            fields = {"name": name, "description": description}
            data = {k: v for k, v in fields.items() if v is not None}
            if tags:
                data["tags"] = json.dumps(tags)
            return self.json(
                "POST", "/v1/datasets", files={"file": (path.name, file, media)}, data=data
            )

    def events(
        self, job_id: str, *, after: int = 0, retries: int = 20, retry_wait: float = 1.0
    ) -> Iterator[Event]:
        """The job's events from `after` on, live, until its final status event. A dropped
        connection is resumed with Last-Event-ID, after a pause (up to `retries` in a row);
        no event is seen twice or skipped."""
        last = after
        failures = 0
        while True:
            headers = {"Accept": "text/event-stream", "Last-Event-ID": str(last)}
            try:
                with self._http.stream(
                    "GET", f"/v1/jobs/{job_id}/events", headers=headers, timeout=_STREAM_TIMEOUT
                ) as response:
                    if response.status_code >= 400:
                        response.read()
                        if response.status_code != 429:
                            raise ApiError(response.status_code, _problem(response))
                        wait = float(response.headers.get("Retry-After", retry_wait))
                        raise _Retry(wait)
                    for event in _parse_sse(response.iter_lines()):
                        if event.seq <= last:
                            continue
                        last = event.seq
                        failures = 0
                        yield event
                        if event.type == "status" and event.data.get("status") in _FINAL:
                            return
                # Closed before the job's final status (the server restarting): resume.
                raise _Retry(retry_wait)
            except (httpx.TransportError, _Retry) as exc:
                failures += 1
                if failures > retries:
                    raise Unreachable(f"{self.url}: event stream lost ({exc})") from exc
                time.sleep(exc.wait if isinstance(exc, _Retry) else retry_wait)


_FINAL = {"succeeded", "failed", "cancelled"}
# The service sends a comment every 15 s (GRAFT_EVENTS_KEEPALIVE_SECONDS) on an idle stream:
# a minute of silence means the connection is dead, and it is resumed.
_STREAM_TIMEOUT = httpx.Timeout(10.0, read=60.0)


class _Retry(Exception):
    def __init__(self, wait: float) -> None:
        super().__init__(f"retry in {wait:g} s")
        self.wait = wait


def _parse_sse(lines: Iterator[str]) -> Iterator[Event]:
    seq: int | None = None
    kind = "message"
    data: list[str] = []
    for line in lines:
        if line == "":
            if data and seq is not None:
                body = json.loads("\n".join(data))
                yield Event(
                    seq, body.get("type", kind), body.get("message", ""), body.get("data") or {}
                )
            seq, kind, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id":
            seq = int(value)
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)


def _problem(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        return body
    return {
        "status": response.status_code,
        "title": response.reason_phrase,
        "detail": response.text[:500],
    }
