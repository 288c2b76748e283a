"""The access log: one JSON line per request, written off the request path.

The request path only puts a tuple on a queue (a fraction of a microsecond); a daemon thread
turns queued entries into JSON lines and writes them in batches, so a burst of requests costs
one write, not one per request. uvicorn's own access log (a `logging` record formatted on the
event loop per request, ~150 µs on a 1-row predict) is switched off by `graft serve`.

A line holds: `ts` (UTC, ms), `request_id` (the client's `X-Request-ID` if it sent a sane one,
else a new one; echoed in the response), `method`, `route` (the template, `/v1/models/{name}/
predict`), `path`, `status`, `latency_ms`, `client`, `key_id` (never the secret), and on
predictions `model` and `version`. Successful predictions can be sampled
(`GRAFT_ACCESS_LOG_PREDICT_SAMPLE`); errors are always written.
"""

import json
import os
import queue
import random
import re
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, TextIO

# What a line is made from: (wall time, request id, method, route, path, status, seconds,
# client, key id, model, version).
Entry = tuple[float, str, str, str, str, int, float, str | None, str | None, str | None, int | None]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# Lines written per batch at most, so one burst cannot hold the writer for long.
_BATCH = 512
_STOP = object()


def request_id(inbound: bytes | None) -> str:
    """The client's request id if it is a plain token of at most 128 characters, else a new
    one (16 hex digits)."""
    if inbound is not None:
        try:
            text = inbound.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if _REQUEST_ID.fullmatch(text):
            return text
    return os.urandom(8).hex()


class AccessLog:
    """JSON lines to `stream`, written by a background thread from a queue."""

    def __init__(self, stream: TextIO | None = None, *, predict_sample: float = 1.0) -> None:
        if not 0.0 <= predict_sample <= 1.0:
            raise ValueError(f"predict_sample must be in [0, 1], got {predict_sample}")
        self.stream = stream
        self.predict_sample = predict_sample
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.dropped = 0

    def keep(self, route: str, status: int) -> bool:
        """Whether this request's line is written: all of them, except a sample of the
        successful predictions when sampling is set."""
        if self.predict_sample >= 1.0 or status >= 400 or not _is_prediction(route):
            return True
        return random.random() < self.predict_sample

    def record(self, entry: Entry) -> None:
        """Queue one request's line (cheap: called on the request path)."""
        if self._thread is None:
            self._start()
        self._queue.put(entry)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="graft-access-log", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued and stop the writer."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(_STOP)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in batch)
            lines = [format_line(item) for item in batch if item is not _STOP]
            if lines:
                self._write("".join(lines))
            if stop:
                return

    def _write(self, text: str) -> None:
        stream = self.stream if self.stream is not None else sys.stdout
        try:
            stream.write(text)
            stream.flush()
        except (OSError, ValueError):
            # A closed or full stream must not take the writer (or the service) down.
            self.dropped += text.count("\n")


def format_line(entry: Entry) -> str:
    """One JSON line (with its newline) for a queued entry."""
    wall, rid, method, route, path, status, seconds, client, key_id, model, version = entry
    line: dict[str, Any] = {
        "ts": datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds"),
        "request_id": rid,
        "method": method,
        "route": route,
        "path": path,
        "status": status,
        "latency_ms": round(seconds * 1000.0, 3),
        "client": client,
        "key_id": key_id,
    }
    if model is not None:
        line["model"] = model
        line["version"] = version
    return json.dumps(line, separators=(",", ":")) + "\n"


def now() -> float:
    return time.time()


def _is_prediction(route: str) -> bool:
    return route.endswith("/predict") or route.endswith("/infer")
