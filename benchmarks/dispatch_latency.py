"""Dispatch latency: how long a job waits between `queued` and `running` with an idle worker.

Each job is submitted to an idle worker (the previous one finished and the worker had a
moment to go back to sleep); latency = started_at - created_at as the service records them.

    .venv/bin/python benchmarks/dispatch_latency.py                       # embedded, SQLite
    .venv/bin/python benchmarks/dispatch_latency.py --executor celery \\
        --broker-url redis://127.0.0.1:6379/0 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import (
    TERMINAL,
    service,
    summary_ms,
    temporary_postgres,
    timestamp,
    warm_up,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=["local", "celery"], default="local")
    parser.add_argument("--jobs", type=int, default=30, help="jobs measured (default 30)")
    parser.add_argument("--idle", type=float, default=0.5, help="pause before each job, s")
    parser.add_argument("--broker-url", help="Celery broker, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres", help="PostgreSQL server URL; a temporary database is made on it"
    )
    args = parser.parse_args()

    with (
        temporary_postgres(args.postgres) as database_url,
        service(
            workers=1,
            executor=args.executor,
            celery_workers=1 if args.executor == "celery" else 0,
            database_url=database_url,
            broker_url=args.broker_url,
        ) as api,
    ):
        dataset = api.dataset("iris")
        warm_up(api, dataset, 1)
        latencies = []
        for _ in range(args.jobs):
            time.sleep(args.idle)
            job = api.wait(api.submit(dataset, "latency", epochs=1), TERMINAL)
            latencies.append(timestamp(job["started_at"]) - timestamp(job["created_at"]))
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(f"dispatch latency (created -> running), {args.executor} executor, {database}")
    print(f"  {summary_ms(latencies)}")


if __name__ == "__main__":
    main()
