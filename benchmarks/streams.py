"""Open event streams: /healthz and /v1/jobs latency with 1,000 SSE streams open, beside none.

A real `graft serve` process (one uvicorn process, no worker processes, GRAFT_LOG_LEVEL
warning, SQLite in a temporary folder unless --postgres names a server, auth on with a fixed
admin key that every request carries, GRAFT_MAX_STREAMS_PER_KEY raised so that one key may
hold them all, GRAFT_MAX_STREAMS set to --streams (default 1,000, its default too),
GRAFT_EVENTS_KEEPALIVE_SECONDS=2 so that every stream writes its keep-alive comment while
the probes run, which last at least 3 s) and one queued source-training job
that no worker runs, so that its streams stay open. The benchmark process opens the streams
on raw sockets from an asyncio loop (each reads its response head and first SSE line, then
keeps reading keep-alives) and measures from a thread of its own, one request at a time on a
keep-alive connection:

- `/healthz`: the process is up; no database, no key check (a public route);
- `/v1/jobs`: a page of jobs, one read-only query on a pooled database connection, with the
  key check. It keeps answering only if the open streams hold no connection of the pool.

Then it checks the process bound (stream 1,001 gets 429 too_many_streams with Retry-After),
cancels the job and times until every stream has received the final event and closed, and
checks that the slots came back (a new stream is accepted). With --postgres it also samples
pg_stat_activity for the benchmark's database while the streams are open.

    .venv/bin/python benchmarks/streams.py                      # 1,000 streams, 500 probes
    .venv/bin/python benchmarks/streams.py --streams 200 --requests 200
    .venv/bin/python benchmarks/streams.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Aim: /healthz p99 under 100 ms with 1,000 streams open.
"""

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import free_port, percentile, temporary_postgres

ADMIN_KEY = "graft-bench-streams-admin-key-0123456789abcdef"
# Shorter than the default 15 s, so that the measurement spans the keep-alive comments.
KEEPALIVE_SECONDS = 2
AUTH = {"Authorization": f"Bearer {ADMIN_KEY}"}


class Client:
    """A keep-alive HTTP/1.1 client that sends the admin key (stdlib only)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, dict[str, str]]:
        payload = None if body is None else json.dumps(body).encode()
        headers = {**AUTH, **({"Content-Type": "application/json"} if payload else {})}
        try:
            self._conn.request(method, path, body=payload, headers=headers)
            response = self._conn.getresponse()
        except (ConnectionError, http.client.HTTPException):
            self._conn.close()
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            self._conn.request(method, path, body=payload, headers=headers)
            response = self._conn.getresponse()
        data = response.read()
        return response.status, (json.loads(data) if data else None), dict(response.headers)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, data, _ = self.call(method, path, body)
        if status >= 400:
            raise RuntimeError(f"{method} {path} -> {status}: {data}")
        return data

    def latencies(self, path: str, count: int, min_seconds: float = 0) -> list[float]:
        """`count` sequential GETs, paced to last at least `min_seconds`."""
        measured = []
        pause = min_seconds / count
        for _ in range(count):
            started = time.perf_counter()
            status, _, _ = self.call("GET", path)
            measured.append(time.perf_counter() - started)
            if status != 200:
                raise RuntimeError(f"GET {path} -> {status}")
            if pause:
                time.sleep(max(0.0, pause - measured[-1]))
        return measured


@contextlib.contextmanager
def graft_serve(env: dict[str, str], log: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`graft serve` on a free port (as benchmarks/_harness.py starts it), ready."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve"],
            env={**env, "GRAFT_PORT": str(port)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 180
        client = Client(port)
        while True:
            if process.poll() is not None:
                raise SystemExit(f"graft serve exited; see its log:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if client.call("GET", "/readyz")[0] == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("graft serve did not become ready in 180 s")
            time.sleep(0.2)
        yield port, process
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class Streams:
    """SSE streams on raw sockets, driven by an asyncio loop on a thread of its own."""

    def __init__(self, port: int, job_id: str) -> None:
        self.port = port
        self.request = (
            f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Bearer {ADMIN_KEY}\r\n\r\n"
        ).encode()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.writers: list[asyncio.StreamWriter] = []
        self.readers: list[asyncio.Task[bool]] = []

    def run(self, coroutine: Any, timeout: float = 600) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    async def _open_one(self) -> tuple[int, str]:
        """(status, first line of the body); the stream stays open and is read on."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            writer.close()
            return status, head.decode("latin-1")
        chunked = b"transfer-encoding: chunked" in head.lower()
        first = await reader.readline()
        if chunked:  # the chunk's size line; its data follows
            first = await reader.readline()
        self.writers.append(writer)
        self.readers.append(asyncio.ensure_future(self._drain(reader)))
        return status, first.decode().strip()

    @staticmethod
    async def _drain(reader: asyncio.StreamReader) -> bool:
        """Read until the server ends the stream; True when it saw the final event."""
        seen = b""
        while True:
            chunk = await reader.read(65536)
            if not chunk:
                return b'"status":"cancelled"' in seen
            seen = (seen + chunk)[-4096:]
            if b'"status":"cancelled"' in seen and b"0\r\n\r\n" in seen:
                return True

    async def _open(self, count: int, at_once: int) -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = []
        for start in range(0, count, at_once):
            batch = [self._open_one() for _ in range(min(at_once, count - start))]
            results += await asyncio.gather(*batch)
        return results

    def open(self, count: int, at_once: int = 100) -> list[tuple[int, str]]:
        results: list[tuple[int, str]] = self.run(self._open(count, at_once))
        return results

    async def _wait_ended(self) -> list[bool]:
        ended: list[bool] = await asyncio.gather(*self.readers)
        return ended

    def wait_ended(self, timeout: float) -> list[bool]:
        ended: list[bool] = self.run(self._wait_ended(), timeout)
        return ended

    async def _close(self) -> None:
        for writer in self.writers:
            writer.close()
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)
        self.writers.clear()
        self.readers.clear()

    def close(self) -> None:
        self.run(self._close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def process_status(pid: int) -> dict[str, int]:
    """Threads and open file descriptors of the server process (Linux /proc)."""
    try:
        threads = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("Threads:")
            )
        )
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, StopIteration):
        return {}
    return {"threads": threads, "open_fds": fds}


def pg_connections(database_url: str | None) -> int | None:
    if not database_url:
        return None
    from sqlalchemy import create_engine, text

    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            count = conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid()"
                )
            ).scalar_one()
    finally:
        engine.dispose()
    return int(count)


def summary(values: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
    }


def raise_fd_limit(needed: int) -> tuple[int, int]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000, help="SSE streams to open")
    parser.add_argument("--requests", type=int, default=500, help="/healthz probes per phase")
    parser.add_argument("--jobs-requests", type=int, default=200, help="/v1/jobs probes")
    parser.add_argument("--postgres", help="a PostgreSQL server for a temporary database")
    args = parser.parse_args()
    # The server (a child, which inherits the limit) and this process each hold one socket
    # per stream.
    soft, _ = raise_fd_limit(2 * args.streams + 1024)
    if soft < args.streams + 256:
        raise SystemExit(f"RLIMIT_NOFILE is {soft}: too low for {args.streams} streams")

    with (
        tempfile.TemporaryDirectory(prefix="graft-bench-streams-") as tmp,
        temporary_postgres(args.postgres) as database_url,
    ):
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")},
            "GRAFT_DATA_DIR": str(Path(tmp) / "data"),
            "GRAFT_WORKERS": "0",
            "GRAFT_LOG_LEVEL": "warning",
            "GRAFT_ADMIN_KEY": ADMIN_KEY,
            "GRAFT_MAX_STREAMS_PER_KEY": str(args.streams * 10),
            "GRAFT_MAX_STREAMS": str(args.streams),
            "GRAFT_EVENTS_KEEPALIVE_SECONDS": str(KEEPALIVE_SECONDS),
        }
        if database_url:
            env["GRAFT_DATABASE_URL"] = database_url
        with graft_serve(env, Path(tmp) / "server.log") as (port, process):
            client = Client(port)
            dataset = client.ok("POST", "/v1/datasets/builtin", {"name": "iris"})["id"]
            job = client.ok(
                "POST",
                "/v1/jobs/source-training",
                {"dataset_id": dataset, "target_column": "target", "model_name": "watched"},
            )["id"]
            client.latencies("/healthz", 50)  # warm the connection and the routes
            client.latencies("/v1/jobs", 20)
            idle: dict[str, Any] = {
                "healthz": summary(client.latencies("/healthz", args.requests)),
                "jobs": summary(client.latencies("/v1/jobs", args.jobs_requests)),
                "server": process_status(process.pid),
                "pg_connections": pg_connections(database_url),
            }

            streams = Streams(port, job)
            started = time.perf_counter()
            opened = streams.open(args.streams)
            open_seconds = time.perf_counter() - started
            refused = [result for result in opened if result[0] != 200]
            if refused:
                raise SystemExit(f"{len(refused)} streams were refused: {refused[:3]}")
            if any(line != "retry: 2000" for _, line in opened):
                raise SystemExit(f"unexpected first lines: {sorted({x for _, x in opened})[:3]}")
            time.sleep(1.0)  # past the first poll of the shared feed
            busy: dict[str, Any] = {
                # Probes for longer than the keep-alive period: every stream's keep-alive
                # comment is written at least once while they run.
                "healthz": summary(
                    client.latencies("/healthz", args.requests, KEEPALIVE_SECONDS + 1)
                ),
                "jobs": summary(client.latencies("/v1/jobs", args.jobs_requests)),
                "server": process_status(process.pid),
                "pg_connections": pg_connections(database_url),
            }
            status, problem, headers = _one_more_stream(port, job)  # one over the bound
            cap = {"status": status, "retry_after": headers.get("retry-after"), **problem}

            started = time.perf_counter()
            client.ok("POST", f"/v1/jobs/{job}/cancel")
            ended = streams.wait_ended(timeout=120)
            fan_out_seconds = time.perf_counter() - started
            streams.close()
            time.sleep(0.5)
            after_status, _, _ = _one_more_stream(port, job)  # the job's ended: replayed
            after = {"server": process_status(process.pid)}

    result = {
        "streams": args.streams,
        "requests": args.requests,
        "database": "postgresql" if args.postgres else "sqlite",
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "open_seconds": round(open_seconds, 2),
        "idle": idle,
        "with_streams": busy,
        "stream_over_cap": {
            "status": cap["status"],
            "code": cap.get("code"),
            "retry_after": cap["retry_after"],
        },
        "cancel_fan_out_seconds": round(fan_out_seconds, 2),
        "streams_saw_final_event": sum(ended),
        "stream_after_close_status": after_status,
        "server_after_close": after["server"],
    }
    print_table(result)
    ok = busy["healthz"]["p99_ms"] < 100
    print(
        f"aim: /healthz p99 under 100 ms with {args.streams} streams open: "
        f"{'met' if ok else 'NOT met'} ({busy['healthz']['p99_ms']} ms)"
    )
    print("BENCH_JSON " + json.dumps(result, separators=(",", ":")))


def _one_more_stream(port: int, job: str) -> tuple[int, Any, dict[str, str]]:
    """One stream request: the status, the body when it is refused, its headers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", f"/v1/jobs/{job}/events", headers={**AUTH, "Accept": "text/event-stream"})
    response = conn.getresponse()
    headers = {k.lower(): v for k, v in response.headers.items()}
    body: Any = {}
    if response.status != 200:
        body = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, body, headers


def print_table(result: dict[str, Any]) -> None:
    print(
        f"Graft with {result['streams']} open SSE streams: one `graft serve` process, no worker "
        f"processes, GRAFT_LOG_LEVEL=warning, {result['database']}, {result['cores']} cores, "
        f"Python {result['python']}; {result['requests']} sequential /healthz probes per phase "
        f"on one keep-alive connection (with streams: over {KEEPALIVE_SECONDS + 1} s, "
        f"keep-alive comments every {KEEPALIVE_SECONDS} s); /healthz: no database, no key "
        "check; /v1/jobs: one pooled read query and the key check"
    )
    print(
        f"{'phase':<22}{'/healthz p50':>14}{'p99':>10}{'max':>10}{'/v1/jobs p50':>15}{'p99':>10}"
        f"{'threads':>9}{'fds':>7}{'pg conns':>10}"
    )
    for label, phase in (
        ("no streams", result["idle"]),
        (f"{result['streams']} streams open", result["with_streams"]),
    ):
        server = phase["server"]
        pg = phase["pg_connections"]
        health, jobs = phase["healthz"], phase["jobs"]
        print(
            f"{label:<22}{health['p50_ms']:>11.2f} ms{health['p99_ms']:>7.2f} ms"
            f"{health['max_ms']:>7.2f} ms{jobs['p50_ms']:>12.2f} ms"
            f"{jobs['p99_ms']:>7.2f} ms{server.get('threads', '-'):>9}"
            f"{server.get('open_fds', '-'):>7}{'-' if pg is None else pg:>10}"
        )
    cap = result["stream_over_cap"]
    print(
        f"opening {result['streams']} streams took {result['open_seconds']} s; stream "
        f"{result['streams'] + 1}: {cap['status']} {cap['code']} (Retry-After {cap['retry_after']})"
    )
    print(
        f"cancel -> all streams ended in {result['cancel_fan_out_seconds']} s; "
        f"{result['streams_saw_final_event']}/{result['streams']} saw the final event; "
        f"a new stream after they closed: {result['stream_after_close_status']}; "
        f"server afterwards: {result['server_after_close']}"
    )


if __name__ == "__main__":
    main()
