"""The access log: one JSON line per request, written off the request path.

The request path only appends a tuple to a deque (a fraction of a microsecond, and no thread
is woken); a daemon thread wakes every `FLUSH_SECONDS`, turns what has piled up into JSON
lines and writes them at once. A first version woke the writer on every request through a
queue: the thread switch and a write per request cost 22 % of a 1-row predict's CPU
(`scripts/bench-serving`, concurrency 8). uvicorn's own access log (a `logging` record
formatted on the event loop per request, ~150 µs on a 1-row predict) is switched off by
`graft serve`.

A line holds: `ts` (UTC, ms), `request_id` (the client's `X-Request-ID` if it sent a sane one,
else a new one; echoed in the response), `method`, `route` (the template, `/v1/models/{name}/
predict`), `path`, `status`, `latency_ms`, `client`, `key_id` (never the secret), and on
predictions `model` and `version`. Successful predictions can be sampled
(`GRAFT_ACCESS_LOG_PREDICT_SAMPLE`); errors are always written.
"""

import itertools
import os
import random
import re
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

import orjson

# What a line is made from: (wall time, request id, method, route, path, status, seconds,
# client, key id, model, version).
Entry = tuple[float, str, str, str, str, int, float, str | None, str | None, str | None, int | None]

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")
# How often the writer wakes to write what has piled up.
FLUSH_SECONDS = 0.1
# Lines written per write call at most.
_BATCH = 1024
# POSIX keeps a pipe write of up to PIPE_BUF (4,096 bytes on Linux) in one piece.
_ATOMIC_WRITE = 4096
# Lines held for the writer at most; beyond it lines are counted in `dropped` instead.
MAX_PENDING = 100_000


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
    return f"{_id_prefix}{next(_id_counter):08x}"


def _new_id_source() -> None:
    """Ids are a random per-process prefix and a counter: unique across the processes and
    restarts of a deployment, without a system call per request (os.urandom was one)."""
    global _id_prefix, _id_counter, _pid
    _id_prefix = os.urandom(4).hex()
    _id_counter = itertools.count(1)
    _pid = os.getpid()


_id_prefix = ""
_id_counter = itertools.count(1)
_pid = os.getpid()
_new_id_source()
# A forked child must not repeat its parent's ids.
os.register_at_fork(after_in_child=_new_id_source)


class AccessLog:
    """JSON lines to `stream` (stdout by default), written by a background thread."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        predict_sample: float = 1.0,
        flush_seconds: float = FLUSH_SECONDS,
    ) -> None:
        if not 0.0 <= predict_sample <= 1.0:
            raise ValueError(f"predict_sample must be in [0, 1], got {predict_sample}")
        self.stream = stream
        self.predict_sample = predict_sample
        self.flush_seconds = flush_seconds
        # deque.append and popleft are atomic: the request path takes no lock.
        self._pending: deque[Entry] = deque()
        self._stop = threading.Event()
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
        """Keep one request's line for the writer (cheap: called on the request path)."""
        if self._thread is None:
            self._start()
        if len(self._pending) >= MAX_PENDING:
            # The writer cannot keep up (a blocked stdout): count the line rather than let
            # memory grow without bound.
            self.dropped += 1
            return
        self._pending.append(entry)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="graft-access-log", daemon=True
                )
                self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending and stop the writer."""
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        self._drain()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            self._drain()

    def _drain(self) -> None:
        pending = self._pending
        carried: bytes | None = None
        while pending or carried is not None:
            chunk: list[bytes] = []
            size = 0
            # Whole lines, at most PIPE_BUF bytes per write: the API processes of one
            # `graft serve --processes N` share stdout, and a pipe keeps writes of that
            # size whole, so their lines never interleave mid-line.
            while (pending or carried is not None) and len(chunk) < _BATCH:
                line = carried if carried is not None else format_line(pending.popleft())
                carried = None
                if chunk and size + len(line) > _ATOMIC_WRITE:
                    carried = line
                    break
                chunk.append(line)
                size += len(line)
            self._write(b"".join(chunk))

    def _write(self, data: bytes) -> None:
        try:
            if self.stream is None:
                # Straight to the descriptor: one write(2) per chunk, none of Python's
                # buffering that would split it.
                sys.stdout.flush()
                written = 0
                while written < len(data):
                    written += os.write(sys.stdout.fileno(), data[written:])
                return
            self.stream.write(data.decode())
            self.stream.flush()
        except (OSError, ValueError):
            # A closed or full stream must not take the writer (or the service) down.
            self.dropped += data.count(b"\n")


def format_line(entry: Entry) -> bytes:
    """One JSON line (with its newline) for a pending entry."""
    wall, rid, method, route, path, status, seconds, client, key_id, model, version = entry
    line: dict[str, Any] = {
        "ts": _timestamp(wall),
        "request_id": rid,
        "method": method,
        "route": route,
        "path": path,
        "status": status,
        "latency_ms": round(seconds * 1000.0, 3),
        "client": client,
        "key_id": key_id,
        # Which API process served it (`graft serve --processes N`).
        "pid": _pid,
    }
    if model is not None:
        line["model"] = model
        line["version"] = version
    return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


_second = -1
_second_text = ""


def _timestamp(wall: float) -> str:
    """ISO 8601 in UTC to the millisecond, the date and time worked out once a second (a
    datetime per line was a third of the line's cost)."""
    global _second, _second_text
    whole = int(wall)
    # As datetime.fromtimestamp: to the nearest microsecond first, then cut to milliseconds.
    micros = round((wall - whole) * 1e6)
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    if whole != _second:
        _second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = whole
    return f"{_second_text}.{micros // 1000:03d}+00:00"


def _is_prediction(route: str) -> bool:
    return route.endswith("/predict") or route.endswith("/infer")
