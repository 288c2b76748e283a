"""Scale: reads that stay flat as versions and queued jobs pile up.

Builds one registry in steps and, at each step, measures a real `graft serve` (one API
process, no job workers so queued jobs stay queued, log level warning, access log on, auth
on: every request carries the admin key) with sequential requests on one keep-alive
connection: p50 and p99 of each list route, the model lookup, a version lookup, predictions
by alias and by default, and job submission.

The baseline is measured in the same minutes: the base registry is copied once built, and
at every step a second `graft serve` on that copy (the "empty" registry) answers the same
requests, interleaved with the grown one's (route by route, the order alternating), so a
slow spell of this shared machine falls on both. Each p99 is divided by the copy's p99 of
the same step; at the base step both registries are the same, which shows the noise floor.

The registry is built through the service layer (`registry.register_versions`, the bulk
path of version registration, and `jobs.submit_source_training`, as the API submits; many
per transaction), in this process, between steps while the servers are stopped:

- first step ("base"): a small model `bench` trained through the API (so that predictions are
  real), then `bench` filled to 60 versions, 60 models and 60 queued jobs, so that every page
  of 50 is full;
- then up to `--versions` versions in all (a fifth in `bench`, the rest in models of 125
  versions each) and `--queued` queued jobs; on PostgreSQL each step ends with `ANALYZE`, as
  autovacuum would soon after a bulk load.

    .venv/bin/python benchmarks/scale.py                                  # 10^5 and 10^6 versions
    .venv/bin/python benchmarks/scale.py --versions 10000,100000 --queued 1000,10000
    .venv/bin/python benchmarks/scale.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Aim: every p99 within 1.2x of the empty registry's.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    BENCH_ADMIN_KEY,
    Api,
    _stop,
    _wait_ready,
    free_port,
    percentile,
    temporary_postgres,
)

BASE_ROWS = 60
MODEL_SIZE = 125
COMMIT_EVERY = 2000
IRIS_ROW = [5.1, 3.5, 1.4, 0.2]


class Registry:
    """Grows the registry through the service layer."""

    def __init__(self, database_url: str) -> None:
        from app.db.session import Database

        self.database = Database(database_url)
        self.versions = 0
        self.queued = 0
        self._fields: dict[str, Any] = {}
        self._weights = b""
        self._dataset_id = ""
        self._next_model = 0

    def learn_from(self, model: str, dataset_id: str) -> None:
        """What every added version copies: the trained model's fields and weights."""
        from sqlalchemy import func, select
        from sqlalchemy.orm import undefer

        from app.db.models import Job, ModelVersion

        with self.database.read_scope() as session:
            first = session.scalar(
                select(ModelVersion)
                .options(undefer(ModelVersion.weights))
                .where(ModelVersion.model_name == model, ModelVersion.version == 1)
            )
            assert first is not None
            self._weights = first.weights
            self._fields = {
                column: getattr(first, column)
                for column in (
                    "kind", "strategy", "parent_name", "parent_version", "dataset_id", "task",
                    "signature", "architecture", "hyperparameters", "preprocessing", "metrics",
                    "size_bytes", "sha256", "memory_bytes", "job_id",
                )
            }  # fmt: skip
            self.versions = session.scalar(select(func.count()).select_from(ModelVersion)) or 0
            self.queued = (
                session.scalar(select(func.count()).select_from(Job).where(Job.status == "queued"))
                or 0
            )
        self._dataset_id = dataset_id

    def add_versions(self, name: str, count: int) -> None:
        from app.services import registry

        done = 0
        while done < count:
            batch = min(COMMIT_EVERY, count - done)
            with self.database.session_scope() as session:
                registry.register_versions(
                    session, name=name, weights=self._weights, count=batch, **self._fields
                )
            done += batch
        self.versions += count

    def grow_versions(self, total: int, big: str) -> None:
        """Up to `total` versions: a fifth of what is added in `big`, the rest in new
        models of MODEL_SIZE versions."""
        missing = total - self.versions
        if missing <= 0:
            return
        self.add_versions(big, missing // 5)
        missing = total - self.versions
        while missing > 0:
            size = min(MODEL_SIZE, missing)
            self.add_versions(f"model-{self._next_model:06d}", size)
            self._next_model += 1
            missing -= size

    def add_models(self, count: int) -> None:
        for _ in range(count):
            self.add_versions(f"model-{self._next_model:06d}", 1)
            self._next_model += 1

    def grow_queued(self, total: int) -> None:
        from app.schemas.jobs import SourceTrainingCreate
        from app.services import jobs

        request = SourceTrainingCreate.model_validate(
            {
                "dataset_id": self._dataset_id,
                "target_column": "target",
                "model_name": "queued",
                "hyperparameters": {"epochs": 1},
            }
        )
        caller = jobs.Caller(max_queued_jobs=10**9)
        while self.queued < total:
            batch = min(COMMIT_EVERY, total - self.queued)
            with self.database.session_scope() as session:
                for _ in range(batch):
                    jobs.submit_source_training(session, request, caller=caller)
            self.queued += batch

    def analyze(self) -> None:
        """PostgreSQL: refresh the planner's statistics, as autovacuum does within a minute
        or so of a bulk load; planned from the empty table's, a filtered page was sorted."""
        if self.database.engine.dialect.name != "postgresql":
            return
        from sqlalchemy import text

        with self.database.engine.connect() as connection:
            connection.execute(text("ANALYZE"))
            connection.commit()

    def close(self) -> None:
        self.database.dispose()


class Server:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.process: subprocess.Popen[bytes] | None = None
        self.api: Api | None = None

    def __enter__(self) -> Api:
        port = free_port()
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "serve", "--no-migrate", "--port", str(port)],
                env={**self.env, "GRAFT_PORT": str(port)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.api = Api(port)
        _wait_ready(self.api, self.process, self.log)
        return self.api

    def __exit__(self, *_: object) -> None:
        assert self.process is not None
        _stop(self.process)


Figures = dict[str, dict[str, float]]
# label, versions, queued jobs, the grown registry's figures, the empty copy's.
Step = tuple[str, int, int, Figures, Figures]


def measure(
    grown: Api, empty: Api, requests: int, job_id: str, dataset_id: str
) -> tuple[Figures, Figures]:
    """p50 and p99 (ms) of each route on the grown registry and on the empty copy, the two
    interleaved request by request."""
    predict = {"instances": [IRIS_ROW]}
    submit = {
        "dataset_id": dataset_id,
        "target_column": "target",
        "model_name": "submitted",
        "hyperparameters": {"epochs": 1},
    }
    routes: list[tuple[str, str, str, Any]] = [
        ("GET /v1/models?limit=50", "GET", "/v1/models?limit=50", None),
        ("GET /v1/models/{name}/versions", "GET", "/v1/models/bench/versions?limit=50", None),
        ("GET /v1/models/{name}", "GET", "/v1/models/bench", None),
        ("GET /v1/models/{name}/versions/1", "GET", "/v1/models/bench/versions/1", None),
        ("GET /v1/jobs?limit=50", "GET", "/v1/jobs?limit=50", None),
        ("GET /v1/jobs?status=queued&limit=50", "GET", "/v1/jobs?status=queued&limit=50", None),
        ("GET /v1/jobs/{id}/events", "GET", f"/v1/jobs/{job_id}/events?limit=50", None),
        ("GET /v1/datasets?limit=50", "GET", "/v1/datasets?limit=50", None),
        ("GET /v1/keys?limit=50", "GET", "/v1/keys?limit=50", None),
        ("predict ?alias=production", "POST", "/v1/models/bench/predict?alias=production", predict),
        ("predict (default)", "POST", "/v1/models/bench/predict", predict),
        ("POST /v1/jobs/source-training", "POST", "/v1/jobs/source-training", submit),
    ]  # fmt: skip
    times: dict[str, dict[str, list[float]]] = {
        label: {"grown": [], "empty": []} for label, *_ in routes
    }
    servers = {"grown": grown, "empty": empty}
    for _label, method, path, body in routes:
        for api in servers.values():
            for _ in range(20):
                api.ok(method, path, body)
    for round_ in range(requests):
        order = ["grown", "empty"] if round_ % 2 == 0 else ["empty", "grown"]
        for label, method, path, body in routes:
            for which in order:
                started = time.perf_counter()
                status, data = servers[which].call(method, path, body)
                times[label][which].append((time.perf_counter() - started) * 1000)
                if status >= 400:
                    raise RuntimeError(f"{label} ({which} registry): {status} {data}")

    def figures(which: str) -> Figures:
        return {
            label: {"p50": percentile(t[which], 50), "p99": percentile(t[which], 99)}
            for label, t in times.items()
        }

    return figures("grown"), figures("empty")


@contextmanager
def copy_of_registry(url: str, data_dir: Path, into: Path) -> Iterator[tuple[str, Path]]:
    """The registry as it is now, copied (the database and the data folder): its URL and
    data folder. Nothing may be connected to it while it is copied."""
    copied_dir = into / "data"
    shutil.copytree(data_dir, copied_dir)
    if url.startswith("sqlite"):
        yield f"sqlite:///{copied_dir / 'graft.db'}", copied_dir
        return
    from sqlalchemy import create_engine, make_url, text

    source = make_url(url)
    name = f"{source.database}_empty"
    admin = create_engine(source.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}" TEMPLATE "{source.database}"'))
    try:
        yield source.set(database=name).render_as_string(hide_password=False), copied_dir
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def migrated_service(folder: Path, postgres: str | None) -> tuple[Path, str, dict[str, str]]:
    """A data folder in `folder`, the database (SQLite there, or `postgres`) migrated, and
    the environment of a `graft serve` on them: one API process, no workers, log level
    warning, auth on with the admin key, no queue bounds or rate limit in the way."""
    data_dir = folder / "data"
    data_dir.mkdir()
    url = postgres or f"sqlite:///{data_dir / 'graft.db'}"
    env = {
        **os.environ,
        "GRAFT_DATA_DIR": str(data_dir),
        "GRAFT_DATABASE_URL": url,
        "GRAFT_ADMIN_KEY": BENCH_ADMIN_KEY,
        "GRAFT_LOG_LEVEL": "warning",
        "GRAFT_API_PROCESSES": "1",
        "GRAFT_WORKERS": "0",
        "GRAFT_MAX_QUEUED_JOBS": str(10**9),
        "GRAFT_MAX_ACTIVE_JOBS_PER_KEY": str(10**9),
        "GRAFT_RATE_LIMIT_PER_SECOND": "0",
    }
    subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], env=env, check=True, capture_output=True
    )
    return data_dir, url, env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="100000,1000000", help="versions in all, per step")
    parser.add_argument("--queued", default="10000,100000", help="queued jobs in all, per step")
    parser.add_argument(
        "--requests", type=int, default=1000, help="timed requests per route and registry"
    )
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (else SQLite)")
    parser.add_argument("--output", type=Path, default=None, help="also write JSON here")
    args = parser.parse_args()
    steps = list(
        zip(
            [int(x) for x in args.versions.split(",")],
            [int(x) for x in args.queued.split(",")],
            strict=True,
        )
    )
    with (
        tempfile.TemporaryDirectory(prefix="graft-scale-") as tmp,
        temporary_postgres(args.postgres) as postgres,
    ):
        data_dir, url, env = migrated_service(Path(tmp), postgres)
        log = Path(tmp) / "server.log"
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            f"database: {'PostgreSQL' if postgres else 'SQLite'}; {args.requests} sequential "
            "keep-alive requests per route and registry, the grown one and the empty copy "
            "interleaved",
            flush=True,
        )
        with Server({**env, "GRAFT_WORKERS": "1"}, log) as api:
            dataset_id = api.ok("POST", "/v1/datasets/builtin", {"name": "iris"})["id"]
            trained = api.submit(dataset_id, "bench", epochs=3)
            api.wait(trained, {"succeeded"})
            api.ok("PUT", "/v1/models/bench/aliases/production", {"version": 1})
        registry = Registry(url)
        registry.learn_from("bench", dataset_id)
        registry.add_versions("bench", BASE_ROWS - 1)
        registry.add_models(BASE_ROWS)
        registry.grow_queued(BASE_ROWS)
        registry.analyze()
        # Disconnected while copied (the engine reconnects on its next use).
        registry.close()
        table: list[Step] = []
        with copy_of_registry(url, data_dir, Path(tmp) / "empty") as (empty_url, empty_dir):
            empty_env = {**env, "GRAFT_DATA_DIR": str(empty_dir), "GRAFT_DATABASE_URL": empty_url}
            for label, versions, queued in [
                ("base", registry.versions, registry.queued),
                *((f"{v:,} versions", v, q) for v, q in steps),
            ]:
                started = time.monotonic()
                registry.grow_versions(versions, "bench")
                registry.grow_queued(queued)
                registry.analyze()
                built = time.monotonic() - started
                with Server(env, log) as grown, Server(empty_env, log) as empty:
                    figures, alongside = measure(grown, empty, args.requests, trained, dataset_id)
                # Submissions add queued jobs: count them for the next step.
                registry.queued += args.requests + 20
                table.append((label, registry.versions, registry.queued, figures, alongside))
                print(
                    f"  {label}: {registry.versions:,} versions, {registry.queued:,} queued jobs"
                    f" (built in {built:.0f} s), measured",
                    flush=True,
                )
            registry.close()
    report = _report(table)
    print(report)
    if args.output is not None:
        args.output.write_text(json.dumps({"steps": table, "report": report}, indent=2))


def _report(table: list["Step"]) -> str:
    """Per route and step: the grown registry's p50 / p99, the empty copy's measured beside
    it, and their p99 ratio; the aim is judged on the steps after the base."""
    lines = []
    header = ["route"] + [f"{label}: p50 / p99 ms (empty alongside)" for label, *_ in table]
    header += [f"p99 / empty ({label})" for label, *_ in table]
    lines.append(" | ".join(header))
    worst = 0.0
    for route in table[0][3]:
        cells = [route]
        for _, _, _, figures, empty in table:
            grown_cell = f"{figures[route]['p50']:.2f} / {figures[route]['p99']:.2f}"
            cells.append(f"{grown_cell} ({empty[route]['p50']:.2f} / {empty[route]['p99']:.2f})")
        for step, (_, _, _, figures, empty) in enumerate(table):
            ratio = figures[route]["p99"] / empty[route]["p99"]
            if step > 0:
                worst = max(worst, ratio)
            cells.append(f"{ratio:.2f}x")
        lines.append(" | ".join(cells))
    sizes = ", ".join(f"{label}: {v:,} versions, {q:,} queued jobs" for label, v, q, *_ in table)
    lines.append(f"steps: {sizes}; empty: the base registry, copied")
    lines.append(
        f"aim: every p99 within 1.2x of the empty registry's: "
        f"{'met' if worst <= 1.2 else 'MISSED'} (worst {worst:.2f}x; at the base step the "
        "two registries are the same, so its ratios show the noise)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
