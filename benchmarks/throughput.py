"""Throughput: jobs per minute with 1 and with 2 workers for the same fixed small job.

All jobs are submitted at once; the figure is jobs / (last finished_at - first created_at).

    .venv/bin/python benchmarks/throughput.py --jobs 40                   # embedded, SQLite
    .venv/bin/python benchmarks/throughput.py --jobs 40 --executor celery \\
        --broker-url redis://127.0.0.1:6379/0 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import TERMINAL, service, temporary_postgres, timestamp, warm_up


def run(args: argparse.Namespace, workers: int) -> float:
    with (
        temporary_postgres(args.postgres) as database_url,
        service(
            workers=workers,
            executor=args.executor,
            celery_workers=workers if args.executor == "celery" else 0,
            database_url=database_url,
            broker_url=args.broker_url,
            # Every job is submitted at once with the one admin key: its quota must hold them.
            extra_env={"GRAFT_MAX_ACTIVE_JOBS_PER_KEY": str(args.jobs + 10)},
        ) as api,
    ):
        dataset = api.dataset("iris")
        warm_up(api, dataset, workers)
        ids = [api.submit(dataset, "throughput", epochs=args.epochs) for _ in range(args.jobs)]
        jobs = [api.wait(job_id, TERMINAL) for job_id in ids]
    failed = [job["id"] for job in jobs if job["status"] != "succeeded"]
    if failed:
        raise SystemExit(f"{len(failed)} jobs did not succeed: {failed[:3]}")
    span = max(timestamp(j["finished_at"]) for j in jobs) - min(
        timestamp(j["created_at"]) for j in jobs
    )
    return len(jobs) / span * 60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executor", choices=["local", "celery"], default="local")
    parser.add_argument("--jobs", type=int, default=40, help="jobs per run (default 40)")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per job on Iris")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--broker-url", help="Celery broker, e.g. redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres", help="PostgreSQL server URL; a temporary database is made on it"
    )
    args = parser.parse_args()
    rates = {workers: run(args, workers) for workers in args.workers}
    database = "PostgreSQL" if args.postgres else "SQLite"
    print(
        f"throughput, {args.executor} executor, {database}: {args.jobs} jobs of "
        f"{args.epochs} epochs on Iris"
    )
    for workers, rate in rates.items():
        print(f"  {workers} worker(s): {rate:7.1f} jobs/min")
    first = args.workers[0]
    for workers in args.workers[1:]:
        print(f"  ratio {workers} : {first} workers = {rates[workers] / rates[first]:.2f}")


if __name__ == "__main__":
    main()
