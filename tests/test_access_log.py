"""The access log: what a line holds, that sampling never hides errors, and request ids."""

import io
import json
import os
import time

import pytest
from fastapi.testclient import TestClient

from app import access_log
from app.access_log import AccessLog, format_line, request_id
from app.config import Settings
from app.main import create_app


def _entry(route: str = "/v1/models/{name}/predict", status: int = 200) -> tuple:
    return (
        1_765_000_000.25,
        "rid-1",
        "POST",
        route,
        "/v1/models/iris/predict",
        status,
        0.0012345,
        "127.0.0.1",
        "key_abc",
        "iris",
        3,
    )


def test_a_line_is_one_json_object_with_the_request_fields() -> None:
    line = format_line(_entry())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert json.loads(line) == {
        "ts": "2025-12-06T05:46:40.250+00:00",
        "request_id": "rid-1",
        "method": "POST",
        "route": "/v1/models/{name}/predict",
        "path": "/v1/models/iris/predict",
        "status": 200,
        "latency_ms": 1.234,
        "client": "127.0.0.1",
        "key_id": "key_abc",
        "pid": os.getpid(),
        "model": "iris",
        "version": 3,
    }
    plain = json.loads(format_line((*_entry()[:9], None, None)))
    assert "model" not in plain and "version" not in plain


def test_stdout_gets_whole_lines_in_writes_a_pipe_keeps_whole(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Several API processes share stdout: no write may end mid-line or exceed PIPE_BUF."""
    writes: list[bytes] = []

    class Stdout:
        def fileno(self) -> int:
            return 1

        def flush(self) -> None:
            pass

    def fake_write(fd: int, data: bytes) -> int:
        assert fd == 1
        writes.append(bytes(data))
        return len(data)

    monkeypatch.setattr(access_log.sys, "stdout", Stdout())
    monkeypatch.setattr(access_log.os, "write", fake_write)
    log = AccessLog(flush_seconds=0.01)
    for _ in range(500):
        log.record(_entry())
    log.close()
    assert sum(chunk.count(b"\n") for chunk in writes) == 500
    assert len(writes) > 1
    assert all(len(chunk) <= 4096 and chunk.endswith(b"\n") for chunk in writes)


def test_the_writer_thread_writes_every_pending_line_by_close() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, flush_seconds=0.01)
    for _ in range(3000):
        log.record(_entry())
    log.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 3000 and all(json.loads(x)["status"] == 200 for x in lines)
    assert log.dropped == 0


def test_the_writer_writes_without_being_closed() -> None:
    stream = io.StringIO()
    log = AccessLog(stream, flush_seconds=0.01)
    log.record(_entry())
    deadline = time.monotonic() + 5
    while not stream.getvalue() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert json.loads(stream.getvalue())["request_id"] == "rid-1"
    log.close()


def test_lines_past_the_bound_are_counted_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(access_log, "MAX_PENDING", 10)
    stream = io.StringIO()
    log = AccessLog(stream, flush_seconds=60)  # the writer does not wake during the test
    for _ in range(25):
        log.record(_entry())
    assert log.dropped == 15
    log.close()
    assert len(stream.getvalue().splitlines()) == 10


def test_sampling_thins_successful_predictions_only() -> None:
    log = AccessLog(io.StringIO(), predict_sample=0.0)
    assert not log.keep("/v1/models/{name}/predict", 200)
    assert not log.keep("/v2/models/{name}/infer", 200)
    assert log.keep("/v1/models/{name}/predict", 422)  # errors are always written
    assert log.keep("/v1/jobs", 200)
    assert AccessLog(io.StringIO(), predict_sample=1.0).keep("/v1/models/{name}/predict", 200)
    with pytest.raises(ValueError):
        AccessLog(io.StringIO(), predict_sample=1.5)


@pytest.mark.parametrize(
    ("inbound", "kept"),
    [
        (b"req-42.a:b_c", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"has space", False),
        (b"\xff\xfe", False),
        (b"line\nbreak", False),
        (None, False),
    ],
)
def test_a_client_request_id_is_kept_only_when_it_is_a_plain_token(
    inbound: bytes | None, kept: bool
) -> None:
    rid = request_id(inbound)
    if kept:
        assert inbound is not None and rid == inbound.decode()
    else:
        assert len(rid) == 16 and int(rid, 16) >= 0


def test_timestamps_are_what_datetime_writes() -> None:
    import random
    from datetime import UTC, datetime

    from app.access_log import _timestamp

    draw = random.Random(7)
    walls = [1765000000.001, 1765000000.9999996, 0.0005, 1.5]
    walls += [draw.uniform(0, 4e9) for _ in range(2000)]
    for wall in walls:
        expected = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
        assert _timestamp(wall) == expected, wall


def test_new_request_ids_differ_within_and_across_processes() -> None:
    import subprocess
    import sys

    program = (
        "from app.access_log import request_id; print(*(request_id(None) for _ in range(1000)))"
    )
    runs = [
        set(
            subprocess.run(
                [sys.executable, "-c", program], capture_output=True, text=True, check=True
            ).stdout.split()
        )
        for _ in range(2)
    ]
    mine = {request_id(None) for _ in range(1000)}
    assert [len(ids) for ids in (*runs, mine)] == [1000, 1000, 1000]
    assert not (runs[0] & runs[1]) and not (runs[0] & mine)


def test_every_response_carries_the_request_id(client: TestClient, settings: Settings) -> None:
    echoed = client.get("/healthz", headers={"X-Request-ID": "trace-7"})
    assert echoed.headers["x-request-id"] == "trace-7"
    fresh = client.get("/v1/nothing-here")
    assert fresh.status_code == 404 and len(fresh.headers["x-request-id"]) == 16
    quiet = settings.model_copy(update={"access_log": False})
    with TestClient(create_app(quiet)) as other:
        assert "x-request-id" not in other.get("/healthz").headers


class _BrokenStream(io.StringIO):
    def write(self, text: str) -> int:
        raise OSError("no space left on device")


def test_an_unwritable_stream_counts_lines_and_keeps_the_writer_alive() -> None:
    log = AccessLog(_BrokenStream(), flush_seconds=0.01)
    for _ in range(5):
        log.record(_entry())
    deadline = time.monotonic() + 5
    while log.dropped < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert log.dropped == 5
    log.record(_entry())  # the writer is still there to take more
    log.close()
    assert log.dropped == 6
