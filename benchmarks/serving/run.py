"""Serving benchmark: Graft against an idiomatic FastAPI app and a plain Starlette ceiling.

One command (`scripts/bench-serving`, or `python -m benchmarks.serving`) does everything in
one run:

1. starts Graft with a worker, and through its API imports Iris, trains the small model
   (4 -> 64 -> 64 -> 3) and the large one (256 -> 1024 -> 1024 -> 10, on synthetic data),
   then downloads their weights for the baselines;
2. starts, each as one uvicorn process pinned to one core (`taskset`), Graft as shipped (keys
   checked, JSON access log on; plus variants: access log off, batching off, every forward
   pass on a thread) and the two baselines holding the same
   weights, and checks that all answer the same JSON;
3. loads them with `wrk`, pinned to another core, at concurrency 1, 8 and 64 with bodies of
   1 and 64 rows, the servers interleaved and the whole repeated `--rounds` times;
4. prints requests/s, p50 and p99 per server and the ratios Graft / baseline; rows/s of one
   10,000-row request against an in-process forward pass; and requests/s of the large model
   at concurrency 64 with micro-batching on and off.

Needs `wrk` (Debian/Ubuntu: `apt-get install -y wrk`), `taskset` (util-linux) and 2 cores.
"""

import argparse
import contextlib
import io
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SMALL, LARGE = "bench-small", "bench-large"

# Graft's servers start with this admin key; the measured requests use a `predict` key made
# through the API (BENCH_KEY), as an application would. The baselines ignore the header.
ADMIN_KEY = "graft-benchmark-admin-key-not-a-secret"
_token = {"key": ADMIN_KEY}

LUA = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("BENCH_KEY")
local file = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.body = file:read("*a")
file:close()

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, '
    .. '"socket_errors": %d, "non_2xx": %d}\\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout, e.status))
end
"""


# -- small HTTP helpers (stdlib only, so the client side adds no dependency) ----------------


def _call(
    method: str,
    url: str,
    payload: Any = None,
    *,
    data: bytes | None = None,
    content_type: str = "application/json",
) -> Any:
    if payload is not None:
        data = json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Authorization", f"Bearer {_token['key']}")
    if data is not None:
        request.add_header("Content-Type", content_type)
    with urllib.request.urlopen(request, timeout=120) as response:
        raw = response.read()
    if response.headers.get_content_type() == "application/json":
        return json.loads(raw)
    return raw


def _upload_csv(api: str, name: str, frame: pd.DataFrame) -> dict[str, Any]:
    boundary = "graft-bench-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\n{name}\r\n',
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{name}.csv"\r\nContent-Type: text/csv\r\n\r\n',
    ]
    body = "".join(parts).encode() + frame.to_csv(index=False).encode()
    body += f"\r\n--{boundary}--\r\n".encode()
    result: dict[str, Any] = _call(
        "POST",
        f"{api}/datasets",
        data=body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    command: list[str]
    env: dict[str, str]
    port: int
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                self.command,
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def wait_ready(self, probe: str, body: bytes, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited; see {self.log}")
            try:
                _call("POST", self.base + probe, data=body)
                return
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s; see {self.log}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def _graft(
    name: str,
    data_dir: Path,
    cpu: str | None,
    logs: Path,
    *,
    granian: bool = False,
    **env: str,
) -> Server:
    """`graft serve` (as shipped: its API processes default to the cores `cpu` gives it), or
    the same app under Granian instead of uvicorn."""
    port = _free_port()
    pin = ["taskset", "-c", cpu] if cpu is not None else []
    serve = [str(Path(PYTHON).parent / "graft"), "serve", "--no-migrate", "--port", str(port)]
    if granian:
        serve = [
            str(Path(PYTHON).parent / "granian"),
            "--interface",
            "asgi",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            env.pop("GRAFT_API_PROCESSES", "1"),
            "--loop",
            "uvloop",
            "--no-access-log",
            "--log-level",
            "warning",
            "app.main:create_app",
        ]
    return Server(
        name=name,
        command=[*pin, *serve],
        env={
            "GRAFT_DATA_DIR": str(data_dir),
            "GRAFT_LOG_LEVEL": "warning",
            "GRAFT_WORKERS": "0",
            "GRAFT_ADMIN_KEY": ADMIN_KEY,
            **env,
        },
        port=port,
        log=logs / f"{name}.log",
    )


def _baseline(app: str, model_dir: Path, cpu: str, logs: Path) -> Server:
    port = _free_port()
    return Server(
        name=app,
        command=[
            "taskset",
            "-c",
            cpu,
            PYTHON,
            "-m",
            "benchmarks.serving.baselines",
            app,
            "--model-dir",
            str(model_dir),
            "--port",
            str(port),
        ],
        env={},
        port=port,
        log=logs / f"{app}.log",
    )


@contextlib.contextmanager
def _running(servers: list[Server]) -> Iterator[list[Server]]:
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


# -- set-up through Graft's API -------------------------------------------------------------


def _wait_for_job(api: str, job: dict[str, Any], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _call("GET", f"{api}/jobs/{job['id']}")
        if state["status"] == "succeeded":
            return
        if state["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"training job {job['id']} {state['status']}: {state['error']}")
        time.sleep(0.5)
    raise RuntimeError(f"training job {job['id']} did not finish in {timeout:.0f}s")


def _synthetic_frame(rows: int, features: int, classes: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, size=rows)
    centres = rng.normal(size=(classes, features))
    values = centres[labels] + rng.normal(scale=2.0, size=(rows, features))
    frame = pd.DataFrame(values.round(4), columns=[f"x{i}" for i in range(features)])
    frame["label"] = [f"class_{i}" for i in labels]
    return frame


def train_models(work: Path, logs: Path) -> dict[str, Path]:
    """Train both benchmark models through Graft's API; return each model's folder."""
    data_dir = work / "graft"
    server = _graft("graft-setup", data_dir, None, logs, GRAFT_WORKERS="1")
    api = server.base + "/v1"
    subprocess.run(
        [str(Path(PYTHON).parent / "graft"), "migrate"],
        cwd=ROOT,
        env={
            **os.environ,
            "GRAFT_DATA_DIR": str(data_dir),
            "GRAFT_LOG_LEVEL": "warning",
            "GRAFT_ADMIN_KEY": ADMIN_KEY,
        },
        check=True,
        capture_output=True,
    )
    with _running([server]):
        _wait_http(server.base + "/healthz")
        iris = _call("POST", f"{api}/datasets/builtin", {"name": "iris"})
        large = _upload_csv(api, "bench-large", _synthetic_frame(1200, 256, 10))
        jobs = [
            _call(
                "POST",
                f"{api}/jobs/source-training",
                {
                    "dataset_id": iris["id"],
                    "target_column": "target",
                    "model_name": SMALL,
                    "architecture": {"hidden_layers": [64, 64]},
                    "hyperparameters": {"epochs": 60, "learning_rate": 0.01, "seed": 0},
                },
            ),
            _call(
                "POST",
                f"{api}/jobs/source-training",
                {
                    "dataset_id": large["id"],
                    "target_column": "label",
                    "model_name": LARGE,
                    "architecture": {"hidden_layers": [1024, 1024]},
                    "hyperparameters": {"epochs": 1, "batch_size": 128, "seed": 0},
                },
            ),
        ]
        for job in jobs:
            _wait_for_job(api, job)
        folders = {}
        for name in (SMALL, LARGE):
            version = _call("GET", f"{api}/models/{name}/versions/1")
            folder = work / "models" / name
            folder.mkdir(parents=True)
            columns = version["preprocessing"]["features"]["columns"]
            meta = {
                "name": name,
                "version": version["version"],
                "architecture": version["architecture"],
                "classes": version["signature"]["classes"],
                "inputs": [column["name"] for column in version["signature"]["inputs"]],
                "mean": [column["mean"] for column in columns],
                "std": [column["std"] for column in columns],
                "memory_bytes": version["memory_bytes"],
            }
            (folder / "meta.json").write_text(json.dumps(meta))
            weights = _call("GET", f"{api}/models/{name}/versions/1/weights")
            (folder / "weights.safetensors").write_bytes(weights)
            folders[name] = folder
        app_key = _call("POST", f"{api}/keys", {"name": "benchmark", "scopes": ["predict"]})
    # From here on every request, wrk's included, is an application's: a `predict` key.
    _token["key"] = app_key["secret"]
    return folders


def _wait_http(url: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            _call("GET", url)
            return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s")


# -- load generation ------------------------------------------------------------------------


@dataclass
class Measurement:
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    # CPU time the server process spent per request: unlike requests/s, it barely moves
    # when other programs compete for the core, so it compares servers on a busy machine.
    cpu_us_per_request: float


@dataclass
class Results:
    runs: dict[tuple[str, ...], list[Measurement]] = field(default_factory=dict)

    def add(self, key: tuple[str, ...], measurement: Measurement) -> None:
        self.runs.setdefault(key, []).append(measurement)

    def median(self, key: tuple[str, ...]) -> Measurement:
        runs = self.runs[key]
        return Measurement(
            requests_per_s=statistics.median(m.requests_per_s for m in runs),
            p50_ms=statistics.median(m.p50_ms for m in runs),
            p99_ms=statistics.median(m.p99_ms for m in runs),
            errors=sum(m.errors for m in runs),
            cpu_us_per_request=statistics.median(m.cpu_us_per_request for m in runs),
        )


def _cpu_seconds(root: int) -> float:
    """User plus system CPU time so far of a process and every process below it (all of a
    deployment's API processes), from /proc."""
    parents: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        ticks[pid] = int(fields[11]) + int(fields[12])
    tree, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in tree]
        tree.update(children)
        frontier.extend(children)
    return sum(ticks.get(pid, 0) for pid in tree) / os.sysconf("SC_CLK_TCK")


def run_wrk(
    server: Server, path: str, body: Path, connections: int, seconds: int, cpu: str, lua: Path
) -> Measurement:
    url = server.base + path
    assert server.process is not None
    command = [
        "taskset",
        "-c",
        cpu,
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(lua),
        url,
    ]
    cpu_before = _cpu_seconds(server.process.pid)
    completed = subprocess.run(
        command,
        env={**os.environ, "BENCH_BODY": str(body), "BENCH_KEY": _token["key"]},
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=True,
    )
    cpu_used = _cpu_seconds(server.process.pid) - cpu_before
    line = next(x for x in completed.stdout.splitlines() if x.startswith("BENCH "))
    stats = json.loads(line.removeprefix("BENCH "))
    return Measurement(
        requests_per_s=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["p50_us"] / 1000,
        p99_ms=stats["p99_us"] / 1000,
        errors=stats["socket_errors"] + stats["non_2xx"],
        cpu_us_per_request=cpu_used / max(1, stats["requests"]) * 1e6,
    )


def run_loadgen(
    loadgen: Path, server: Server, path: str, body: Path, connections: int, seconds: int, cpu: str
) -> Measurement:
    """The same load from ../shared/tools/loadgen.c: a second, closed-loop opinion whose
    latencies are the raw ones (p99 is `lat_p99_us`, without wrk's correction)."""
    assert server.process is not None
    command = [
        "taskset",
        "-c",
        cpu,
        str(loadgen),
        "-c",
        str(connections),
        "-d",
        str(seconds),
        "-f",
        str(body),
        "-H",
        f"Authorization: Bearer {_token['key']}",
        "-H",
        "Content-Type: application/json",
        server.base + path,
    ]
    cpu_before = _cpu_seconds(server.process.pid)
    completed = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    cpu_used = _cpu_seconds(server.process.pid) - cpu_before
    line = next(x for x in completed.stdout.splitlines() if x.startswith("BENCH_JSON "))
    stats = json.loads(line.removeprefix("BENCH_JSON "))
    errors = sum(stats[k] for k in ("err_connect", "err_read", "err_write", "err_status"))
    return Measurement(
        requests_per_s=stats["requests"] / (stats["duration_us"] / 1e6),
        p50_ms=stats["lat_p50_us"] / 1000,
        p99_ms=stats["lat_p99_us"] / 1000,
        errors=errors + stats["err_timeout"],
        cpu_us_per_request=cpu_used / max(1, stats["requests"]) * 1e6,
    )


def _build_loadgen(work: Path) -> Path | None:
    source = ROOT.parent / "shared" / "tools" / "loadgen.c"
    compiler = shutil.which("cc") or shutil.which("gcc")
    if not source.exists() or compiler is None:
        print(f"loadgen: skipped ({source} or a C compiler is missing); wrk figures only")
        return None
    binary = work / "loadgen"
    subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def _body(path: Path, rows: np.ndarray) -> Path:
    path.write_bytes(json.dumps({"instances": rows.round(4).tolist()}).encode())
    return path


def _rows(meta: dict[str, Any], count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mean, std = np.array(meta["mean"]), np.array(meta["std"])
    values: np.ndarray = mean + std * rng.normal(size=(count, len(mean)))
    return values


def _check_agreement(servers: list[Server], path: str, body: Path) -> str:
    answers = [_call("POST", server.base + path, data=body.read_bytes()) for server in servers]
    first = answers[0]
    for server, answer in zip(servers[1:], answers[1:], strict=True):
        if answer["predictions"] != first["predictions"] or answer["classes"] != first["classes"]:
            raise RuntimeError(f"{server.name} and {servers[0].name} predict differently")
        gap = np.abs(np.array(answer["probabilities"]) - np.array(first["probabilities"])).max()
        if gap > 1e-5:
            raise RuntimeError(f"{server.name} probabilities differ by {gap:g}")
    return f"{len(first['predictions'])} rows, same predictions, probabilities within 1e-5"


# -- the run --------------------------------------------------------------------------------


def _preflight(args: argparse.Namespace) -> None:
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if "wrk" in missing:
        sys.exit(
            "error: wrk is not installed. It is the load generator of this benchmark: install "
            "it with `apt-get install -y wrk` (Debian/Ubuntu) or `brew install wrk` (macOS)."
        )
    if "taskset" in missing:
        sys.exit("error: taskset is not installed (Debian/Ubuntu: `apt-get install util-linux`).")
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("error: the benchmark needs 2 cores: one for the server, one for wrk")
    if args.server_cpu is None:
        args.server_cpu = str(cpus[0])
    if args.client_cpu is None:
        args.client_cpu = str(cpus[1])
    # The 1-vs-2-process comparison gives the server two cores; with only two, the load
    # generator shares the second (the report says so).
    args.scale_cpus = f"{cpus[0]},{cpus[1]}"
    args.scale_client_cpu = str(cpus[2]) if len(cpus) >= 3 else str(cpus[1])


def _machine() -> dict[str, Any]:
    model = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "load_average": os.getloadavg(),
        "python": platform.python_version(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench-serving", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run (2 s, 1 round)")
    parser.add_argument("--seconds", type=int, default=10, help="length of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="times the whole table repeats")
    parser.add_argument("--server-cpu", default=None, help="core for the servers (default: 1st)")
    parser.add_argument("--client-cpu", default=None, help="core for wrk (default: 2nd)")
    parser.add_argument("--output", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds = 2, 1
    _preflight(args)

    work = Path(tempfile.mkdtemp(prefix="graft-bench-"))
    logs = work / "logs"
    logs.mkdir()
    try:
        report = _benchmark(args, work, logs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept {work}")
    if args.output is not None:
        args.output.write_text(json.dumps(report, indent=2))
        print(f"results written to {args.output}")


def _benchmark(args: argparse.Namespace, work: Path, logs: Path) -> dict[str, Any]:
    machine = _machine()
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, load average "
        f"{' '.join(f'{x:.2f}' for x in machine['load_average'])}; servers on core "
        f"{args.server_cpu}, wrk on core {args.client_cpu}; {args.rounds} round(s) of "
        f"{args.seconds} s per run"
    )
    print("training the benchmark models through Graft's API ...", flush=True)
    folders = train_models(work, logs)
    metas = {
        name: json.loads((folder / "meta.json").read_text()) for name, folder in folders.items()
    }
    bodies = work / "bodies"
    bodies.mkdir()
    small_bodies = {
        1: _body(bodies / "small-1.json", _rows(metas[SMALL], 1, 1)),
        64: _body(bodies / "small-64.json", _rows(metas[SMALL], 64, 2)),
    }
    big_request = _body(bodies / "small-10000.json", _rows(metas[SMALL], 10_000, 3))
    large_body = _body(bodies / "large-1.json", _rows(metas[LARGE], 1, 4))
    lua = work / "post.lua"
    lua.write_text(LUA)

    cpu, data_dir = args.server_cpu, work / "graft"
    graft = _graft("graft", data_dir, cpu, logs)
    # The two tuned variants serve more than the default per-key rate (5,000/s) at c=64 on a
    # fast core; they compare forward-pass placements, so the rate limit is off for them.
    threaded = _graft(
        "graft-thread",
        data_dir,
        cpu,
        logs,
        GRAFT_BATCH_INLINE_MAX_WORK="0",
        GRAFT_RATE_LIMIT_PER_SECOND="0",
    )
    unbatched = _graft(
        "graft-nobatch",
        data_dir,
        cpu,
        logs,
        GRAFT_BATCHING="false",
        GRAFT_RATE_LIMIT_PER_SECOND="0",
    )
    # Graft as shipped keeps its JSON access log on and checks keys; these are the same
    # without one or the other, and the same app under Granian instead of uvicorn.
    unlogged = _graft("graft-nolog", data_dir, cpu, logs, GRAFT_ACCESS_LOG="false")
    keyless = _graft("graft-noauth", data_dir, cpu, logs, GRAFT_AUTH="disabled")
    granian = _graft("graft-granian", data_dir, cpu, logs, granian=True)
    # 1 against 2 API processes, both given the same two cores.
    one_process = _graft("graft-1proc", data_dir, args.scale_cpus, logs, GRAFT_API_PROCESSES="1")
    two_processes = _graft("graft-2proc", data_dir, args.scale_cpus, logs, GRAFT_API_PROCESSES="2")
    idiomatic = _baseline("idiomatic", folders[SMALL], cpu, logs)
    ceiling = _baseline("ceiling", folders[SMALL], cpu, logs)
    small_path, large_path = f"/v1/models/{SMALL}/predict", f"/v1/models/{LARGE}/predict"
    results = Results()
    loadgen = _build_loadgen(work)
    variants = [unlogged, keyless, granian, one_process, two_processes]
    with _running([graft, threaded, unbatched, *variants, idiomatic, ceiling]):
        small_servers = [graft, idiomatic, ceiling]
        for server in [*small_servers, threaded, unbatched, *variants]:
            server.wait_ready(small_path, small_bodies[1].read_bytes())
        for server in (graft, unbatched):
            server.wait_ready(large_path, large_body.read_bytes())
        print("responses agree:", _check_agreement(small_servers, small_path, small_bodies[64]))

        def measure(key: tuple[str, ...], server: Server, path: str, body: Path, c: int) -> None:
            results.add(key, run_wrk(server, path, body, c, args.seconds, args.client_cpu, lua))

        for server in [*small_servers, threaded, unlogged, keyless, granian]:  # warm-up
            run_wrk(server, small_path, small_bodies[1], 8, 1, args.client_cpu, lua)
        for server in (one_process, two_processes):
            run_wrk(server, small_path, small_bodies[1], 8, 1, args.scale_client_cpu, lua)
        for round_index in range(args.rounds):
            print(f"round {round_index + 1}/{args.rounds} ...", flush=True)
            order = small_servers[round_index % 3 :] + small_servers[: round_index % 3]
            for c in (1, 8, 64):
                for rows, body in small_bodies.items():
                    for server in order:
                        measure(
                            ("small", server.name, str(c), str(rows)), server, small_path, body, c
                        )
            for c in (1, 8, 64):
                for server in (graft, unlogged) if round_index % 2 else (unlogged, graft):
                    measure(("log", server.name, str(c)), server, small_path, small_bodies[1], c)
            configurations = [graft, unlogged, keyless, idiomatic, ceiling]
            shift = round_index % len(configurations)
            configurations = configurations[shift:] + configurations[:shift]
            for rows, body in small_bodies.items():
                for server in (keyless, unlogged):
                    measure(("small", server.name, "8", str(rows)), server, small_path, body, 8)
                if loadgen is not None:
                    for server in configurations:
                        results.add(
                            ("loadgen", server.name, str(rows)),
                            run_loadgen(
                                loadgen, server, small_path, body, 8, args.seconds, args.client_cpu
                            ),
                        )
            for c in (8, 64):
                for server in (graft, granian) if round_index % 2 else (granian, graft):
                    measure(("server", server.name, str(c)), server, small_path, small_bodies[1], c)
            for c in (8, 64):
                for server in (one_process, two_processes):
                    results.add(
                        ("processes", server.name, str(c)),
                        run_wrk(
                            server,
                            small_path,
                            small_bodies[1],
                            c,
                            args.seconds,
                            args.scale_client_cpu,
                            lua,
                        ),
                    )
            for c in (1, 64):
                for server in (graft, threaded):
                    measure(("inline", server.name, str(c)), server, small_path, small_bodies[1], c)
            for c in (1, 64):
                for server in (graft, unbatched):
                    measure(("batching", server.name, str(c)), server, large_path, large_body, c)
            for server in order:
                measure(("10k", server.name), server, small_path, big_request, 1)
        floor = json.loads(
            subprocess.run(
                [
                    "taskset",
                    "-c",
                    cpu,
                    PYTHON,
                    "-m",
                    "benchmarks.serving.floor",
                    "--model-dir",
                    str(folders[SMALL]),
                    "--rows",
                    "10000",
                    "--seconds",
                    str(max(2, args.seconds // 2)),
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        in_process = json.loads(
            subprocess.run(
                [
                    "taskset",
                    "-c",
                    cpu,
                    PYTHON,
                    "-m",
                    "benchmarks.serving.inprocess",
                    "--graft-data-dir",
                    str(data_dir),
                    "--model-dir",
                    str(folders[SMALL]),
                    "--body-dir",
                    str(bodies),
                    "--rounds",
                    "4" if args.quick else "10",
                ],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
    return _print_report(results, floor, in_process, machine, metas, args, loadgen is not None)


def _print_report(
    results: Results,
    floor: dict[str, Any],
    in_process: dict[str, dict[str, float]],
    machine: dict[str, Any],
    metas: dict[str, Any],
    args: argparse.Namespace,
    with_loadgen: bool,
) -> dict[str, Any]:
    out = io.StringIO()

    def row(*cells: str) -> None:
        print(" | ".join(cells), file=out)

    aims: list[tuple[str, bool]] = []
    print(
        "\nsmall model 4 -> 64 -> 64 -> 3, per server: requests/s, p50 and p99 (ms), server CPU"
        " per request (us); ratios Graft / baseline of requests/s (and of CPU per request,"
        " baseline / Graft, which holds steadier on a busy machine)",
        file=out,
    )
    row(
        f"{'conc':>4} {'rows':>4}",
        f"{'graft':>29}",
        f"{'idiomatic FastAPI':>29}",
        f"{'Starlette ceiling':>29}",
        f"{'/idiomatic (cpu)':>16}",
        f"{'/ceiling (cpu)':>16}",
    )
    for c in ("1", "8", "64"):
        for rows in ("1", "64"):
            cells = []
            medians = {}
            for name in ("graft", "idiomatic", "ceiling"):
                m = medians[name] = results.median(("small", name, c, rows))
                cells.append(
                    f"{m.requests_per_s:7.0f} {m.p50_ms:6.2f} {m.p99_ms:7.2f} "
                    f"{m.cpu_us_per_request:5.0f}{_err(m)}"
                )
            graft = medians["graft"]
            ratios = {}
            for name in ("idiomatic", "ceiling"):
                ratios[name] = graft.requests_per_s / medians[name].requests_per_s
                by_cpu = medians[name].cpu_us_per_request / max(graft.cpu_us_per_request, 1e-9)
                cells.append(f"{ratios[name]:8.2f} ({by_cpu:4.2f})")
            row(f"{c:>4} {rows:>4}", *cells)
            vs_idiomatic, vs_ceiling = ratios["idiomatic"], ratios["ceiling"]
            cpu_vs_ceiling = medians["ceiling"].cpu_us_per_request / max(
                graft.cpu_us_per_request, 1e-9
            )
            if c == "8":
                aims += [
                    (f"c=8, {rows} row(s): graft >= 1.2x idiomatic req/s", vs_idiomatic >= 1.2),
                    (f"c=8, {rows} row(s): graft >= 0.8x ceiling req/s", vs_ceiling >= 0.8),
                    (
                        f"c=8, {rows} row(s): graft CPU/req <= 1.25x ceiling's (0.8x speed)",
                        cpu_vs_ceiling >= 0.8,
                    ),
                ]
            if c == "64":
                aims.append(
                    (
                        f"c=64, {rows} row(s): graft p99 <= 1.5x ceiling p99",
                        graft.p99_ms <= 1.5 * medians["ceiling"].p99_ms,
                    )
                )

    print(
        "\nthe apps alone, called in-process without an HTTP server: CPU us per request"
        " (best of interleaved bursts; steadier than the wrk figures on a busy machine)",
        file=out,
    )
    for rows in ("1", "64"):
        ours, idiomatic, ceiling = (in_process[n][rows] for n in ("graft", "idiomatic", "ceiling"))
        print(
            f"  {rows:>2} row(s): graft {ours:5.0f}, idiomatic {idiomatic:5.0f}, ceiling "
            f"{ceiling:5.0f}; speed graft/idiomatic {idiomatic / ours:.2f}x, graft/ceiling "
            f"{ceiling / ours:.2f}x",
            file=out,
        )

    print(
        "\nthe JSON access log (on as shipped) against the same server with it off, 1 row:"
        " its cost in server CPU per request and in requests/s",
        file=out,
    )
    for c in ("1", "8", "64"):
        on, off = (results.median(("log", n, c)) for n in ("graft", "graft-nolog"))
        cpu_cost = on.cpu_us_per_request / max(off.cpu_us_per_request, 1e-9) - 1
        rate_cost = 1 - on.requests_per_s / off.requests_per_s
        print(
            f"  c={c:>2}: on {_brief(on)}; off {_brief(off)}: CPU/req {100 * cpu_cost:+.1f} %,"
            f" req/s {-100 * rate_cost:+.1f} %",
            file=out,
        )
        if c == "8":
            aims.append(
                ("c=8, 1 row: the access log costs <= 5 % CPU per request", cpu_cost <= 0.05)
            )

    for rows in ("1", "64"):
        logged, unlogged = in_process["graft"][rows], in_process["graft-nolog"][rows]
        print(
            f"  in-process, {rows:>2} row(s): on {logged:5.0f} us, off {unlogged:5.0f} us CPU"
            f" per request: {100 * (logged / unlogged - 1):+.1f} %",
            file=out,
        )

    print(
        "\nconfigurations at concurrency 8, each one API process on the same core: Graft as"
        " shipped (keys checked, access log on), access log off (GRAFT_ACCESS_LOG=false),"
        " auth off (GRAFT_AUTH=disabled), and the two baselines (no keys, no access log);"
        " req/s, p50/p99 ms, CPU us/req; ratio to the ceiling by req/s and (CPU)",
        file=out,
    )
    names = {
        "graft": "graft as shipped",
        "graft-nolog": "graft, access log off",
        "graft-noauth": "graft, auth off",
        "idiomatic": "idiomatic FastAPI",
        "ceiling": "Starlette ceiling",
    }
    generators = [("wrk", "small")] + ([("loadgen", "loadgen")] if with_loadgen else [])
    for rows in ("1", "64"):
        for generator, section in generators:
            key_of = {
                name: (section, name, "8", rows) if section == "small" else (section, name, rows)
                for name in names
            }
            top = results.median(key_of["ceiling"])
            for name, label in names.items():
                m = results.median(key_of[name])
                print(
                    f"  {rows:>2} row(s) {generator:<7} {label:<22} {m.requests_per_s:7.0f}"
                    f" {m.p50_ms:6.2f} {m.p99_ms:7.2f} {m.cpu_us_per_request:5.0f}"
                    f"  {m.requests_per_s / top.requests_per_s:5.2f}x"
                    f" ({top.cpu_us_per_request / max(m.cpu_us_per_request, 1e-9):4.2f}){_err(m)}",
                    file=out,
                )

    print("\nthe HTTP server: Graft under uvicorn (shipped) and under Granian, 1 row", file=out)
    for c in ("8", "64"):
        on_uvicorn, on_granian = (
            results.median(("server", n, c)) for n in ("graft", "graft-granian")
        )
        print(
            f"  c={c:>2}: uvicorn {_brief(on_uvicorn)}; granian {_brief(on_granian)}: "
            f"granian/uvicorn {on_granian.requests_per_s / on_uvicorn.requests_per_s:.2f}x req/s",
            file=out,
        )

    shared = args.scale_client_cpu in args.scale_cpus.split(",")
    print(
        f"\n1 and 2 API processes (`--processes`), both on cores {args.scale_cpus}, wrk on core"
        f" {args.scale_client_cpu}{' (shared with a server core: only 2 here)' if shared else ''};"
        " CPU summed over every process of the deployment, 1 row",
        file=out,
    )
    for c in ("8", "64"):
        one, two = (results.median(("processes", n, c)) for n in ("graft-1proc", "graft-2proc"))
        print(
            f"  c={c:>2}: 1 process {_brief(one)}; 2 processes {_brief(two)}: "
            f"{two.requests_per_s / one.requests_per_s:.2f}x req/s",
            file=out,
        )

    print("\nforward pass on the event loop (default for small passes) vs on a thread", file=out)
    for c in ("1", "64"):
        inline, thread = (results.median(("inline", n, c)) for n in ("graft", "graft-thread"))
        print(
            f"  c={c:>2}, 1 row: inline {_brief(inline)}; thread {_brief(thread)}: "
            f"{inline.requests_per_s / thread.requests_per_s:.2f}x req/s",
            file=out,
        )

    print("\nmicro-batching, large model 256 -> 1024 -> 1024 -> 10, 1-row bodies", file=out)
    for c in ("1", "64"):
        on, off = (results.median(("batching", n, c)) for n in ("graft", "graft-nobatch"))
        print(
            f"  c={c:>2}: on {_brief(on)}; off {_brief(off)}: "
            f"{on.requests_per_s / off.requests_per_s:.2f}x req/s",
            file=out,
        )

    print("\none request of 10,000 rows (small model), concurrency 1: rows/s", file=out)
    ten_k = {
        n: results.median(("10k", n)).requests_per_s * 10_000
        for n in ("graft", "idiomatic", "ceiling")
    }
    for name, rate in ten_k.items():
        print(f"  {name:<10} {rate:12.0f} rows/s", file=out)
    print(
        f"  in-process forward pass on a ready tensor (the floor): {floor['rows_per_s']:.0f} "
        f"rows/s; graft is {ten_k['graft'] / floor['rows_per_s']:.2f}x of it",
        file=out,
    )
    print(
        f"  in-process prediction from Python lists to Python lists: "
        f"{floor['from_lists_rows_per_s']:.0f} rows/s; graft is "
        f"{ten_k['graft'] / floor['from_lists_rows_per_s']:.2f}x of it",
        file=out,
    )
    aims.append(
        (
            "10,000 rows: graft >= 0.5x in-process rows/s",
            ten_k["graft"] / floor["rows_per_s"] >= 0.5,
        )
    )

    print("\naims", file=out)
    for text, met in aims:
        print(f"  [{'met' if met else 'MISSED'}] {text}", file=out)
    print(out.getvalue())
    return {
        "machine": machine,
        "models": {name: {"memory_bytes": meta["memory_bytes"]} for name, meta in metas.items()},
        "runs": {"/".join(key): [m.__dict__ for m in runs] for key, runs in results.runs.items()},
        "floor": floor,
        "in_process_cpu_us": in_process,
        "aims": {text: met for text, met in aims},
        "report": out.getvalue(),
    }


def _brief(m: Measurement) -> str:
    return (
        f"{m.requests_per_s:6.0f} req/s (p50 {m.p50_ms:.2f}, p99 {m.p99_ms:.2f} ms, "
        f"{m.cpu_us_per_request:.0f} us CPU/req){_err(m)}"
    )


def _err(m: Measurement) -> str:
    return f" ({m.errors} errors!)" if m.errors else ""
