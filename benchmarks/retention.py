"""Retention: predictions and submissions while old jobs and their events are pruned.

Builds a history through the service layer (`jobs.submit_source_training`, `jobs.cancel`,
`job_events.add_event`, many per transaction): `--jobs` finished jobs, each with its
queued and cancelled status events and `--events` log events. Then a real `graft serve`
(one API process, no workers, so the measured submissions stay queued; log level warning,
access log and auth on) answers one client's sequential keep-alive requests, a prediction
and a job submission in turn, the whole time, while beside it the prune that each worker's
periodic sweep runs (`app.jobs.worker.prune`, in a process of its own, started and its
imports done before anything is timed, as a worker's are) applies first
`GRAFT_JOB_EVENTS_RETENTION_DAYS` (the log events go, the status events stay) and then
`GRAFT_JOB_RETENTION_DAYS` (the jobs go, with their events), both set so that every built
job is past them. Each request is counted in the phase it started in: before the prunes,
during each, after them; p50 and p99 per phase and the ratio of each prune's p99 to the
quiet phases' (before and after together).

    .venv/bin/python benchmarks/retention.py
    .venv/bin/python benchmarks/retention.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Aim: p99 of predictions and submissions unchanged while a prune runs (within 1.2x).
"""

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import percentile, temporary_postgres
from benchmarks.scale import IRIS_ROW, Server, migrated_service

COMMIT_EVERY = 1000
PRUNE = """
import sys
from app.config import Settings
from app.db.session import Database
from app.jobs import worker
database = Database(sys.argv[1])
print("ready", flush=True)
for line in sys.stdin:
    days = {"events": "job_events_retention_days", "jobs": "job_retention_days"}
    settings = Settings(job_events_retention_days=0, job_retention_days=0)
    worker.prune(database, settings.model_copy(update={days[line.strip()]: float(sys.argv[2])}))
    print("done", flush=True)
"""


def build_history(url: str, dataset_id: str, jobs_count: int, events: int) -> None:
    """`jobs_count` cancelled jobs, each with `events` log events besides its status ones."""
    from app.db.session import Database
    from app.enums import EventType
    from app.schemas.jobs import SourceTrainingCreate
    from app.services import jobs
    from app.services.job_events import add_event

    database = Database(url)
    request = SourceTrainingCreate.model_validate(
        {
            "dataset_id": dataset_id,
            "target_column": "target",
            "model_name": "history",
            "hyperparameters": {"epochs": 1},
        }
    )
    caller = jobs.Caller(max_queued_jobs=10**9)
    done = 0
    while done < jobs_count:
        batch = min(COMMIT_EVERY, jobs_count - done)
        with database.session_scope() as session:
            for _ in range(batch):
                job, _created = jobs.submit_source_training(session, request, caller=caller)
                for n in range(events):
                    add_event(session, job.id, EventType.LOG, f"epoch {n + 1}", {"loss": 0.5})
                jobs.cancel(session, job.id)
        done += batch
    database.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000, help="finished jobs to prune")
    parser.add_argument("--events", type=int, default=8, help="log events per job")
    parser.add_argument("--quiet-seconds", type=float, default=20.0, help="before and after")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (else SQLite)")
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory(prefix="graft-retention-") as tmp,
        temporary_postgres(args.postgres) as postgres,
    ):
        _data_dir, url, env = migrated_service(Path(tmp), postgres)
        log = Path(tmp) / "server.log"
        with Server({**env, "GRAFT_WORKERS": "1"}, log) as api:
            dataset_id = api.ok("POST", "/v1/datasets/builtin", {"name": "iris"})["id"]
            trained = api.submit(dataset_id, "bench", epochs=3)
            api.wait(trained, {"succeeded"})
        started = time.monotonic()
        build_history(url, dataset_id, args.jobs, args.events)
        print(
            f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
            f"database: {'PostgreSQL' if postgres else 'SQLite'}; history: {args.jobs:,} "
            f"finished jobs with {args.events + 2} events each, built in "
            f"{time.monotonic() - started:.0f} s",
            flush=True,
        )
        # Every built job ended before this: one second, in days, is past for all of them.
        one_second = str(1 / 86400)
        phases: list[tuple[str, float]] = []
        samples: list[tuple[float, str, float]] = []
        with Server(env, log) as api:
            stop = threading.Event()
            predict = {"instances": [IRIS_ROW]}
            submit = {
                "dataset_id": dataset_id,
                "target_column": "target",
                "model_name": "submitted",
                "hyperparameters": {"epochs": 1},
            }
            for _ in range(20):
                api.ok("POST", "/v1/models/bench/predict", predict)
                api.ok("POST", "/v1/jobs/source-training", submit)

            def client() -> None:
                routes: list[tuple[str, str, Any]] = [
                    ("predict", "/v1/models/bench/predict", predict),
                    ("submit", "/v1/jobs/source-training", submit),
                ]
                while not stop.is_set():
                    for label, path, body in routes:
                        began = time.perf_counter()
                        status, data = api.call("POST", path, body)
                        samples.append((began, label, (time.perf_counter() - began) * 1000))
                        if status >= 400:
                            raise RuntimeError(f"{label}: {status} {data}")

            # The worker's process, started and imported before anything is timed.
            pruner = subprocess.Popen(
                [sys.executable, "-c", PRUNE, url, one_second],
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            assert pruner.stdin is not None and pruner.stdout is not None
            assert pruner.stdout.readline() == "ready\n", "the pruning process did not start"
            measuring = threading.Thread(target=client)
            phases.append(("before", time.perf_counter()))
            measuring.start()
            time.sleep(args.quiet_seconds)
            for phase, which in (("events prune", "events"), ("jobs prune", "jobs")):
                phases.append((phase, time.perf_counter()))
                began = time.monotonic()
                pruner.stdin.write(f"{which}\n")
                pruner.stdin.flush()
                assert pruner.stdout.readline() == "done\n", f"{phase} failed"
                print(f"  {phase}: {time.monotonic() - began:.1f} s", flush=True)
            phases.append(("after", time.perf_counter()))
            time.sleep(args.quiet_seconds)
            stop.set()
            measuring.join()
            pruner.stdin.close()
            pruner.wait(timeout=60)
            left = api.ok("GET", "/v1/jobs?status=cancelled&limit=1")["data"]
        print(_report(phases, samples, left_behind=len(left)))


def _report(
    phases: list[tuple[str, float]], samples: list[tuple[float, str, float]], left_behind: int
) -> str:
    def phase_of(moment: float) -> str:
        current = phases[0][0]
        for name, began in phases:
            if moment >= began:
                current = name
        return current

    by: dict[tuple[str, str], list[float]] = {}
    for began, label, ms in samples:
        by.setdefault((phase_of(began), label), []).append(ms)
    lines = ["route | phase | requests | p50 ms | p99 ms | p99 / quiet"]
    worst = 0.0
    for label in ("predict", "submit"):
        quiet = by.get(("before", label), []) + by.get(("after", label), [])
        quiet_p99 = percentile(quiet, 99)
        for name, _ in phases:
            times = by.get((name, label), [])
            if not times:
                continue
            ratio = percentile(times, 99) / quiet_p99
            if name.endswith("prune"):
                worst = max(worst, ratio)
            lines.append(
                f"{label} | {name} | {len(times)} | {percentile(times, 50):.2f} | "
                f"{percentile(times, 99):.2f} | {ratio:.2f}x"
            )
    lines.append(f"finished jobs left after the jobs prune: {left_behind}")
    lines.append(
        f"aim: p99 while pruning within 1.2x of the quiet phases': "
        f"{'met' if worst <= 1.2 else 'MISSED'} (worst {worst:.2f}x)"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
