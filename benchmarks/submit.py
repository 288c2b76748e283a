"""Job submission throughput: 16 clients submitting source-training jobs at once.

A real `graft serve` (as shipped: API processes by the cores available, log level warning,
access log on, auth on with the admin key on every request; no job workers, so the jobs
stay queued and only submission is measured; the queue and per-key bounds raised so that
none refuses), on SQLite in a temporary folder or on a fresh PostgreSQL database
(--postgres). Each client is a thread with its own keep-alive connection and its own API key
with the `train` scope (16 applications; `--one-key` makes them share the admin key, whose
quota check then serialises them), and submits one job after another for --seconds; every
2xx is a job committed before its answer (the service's promise), so jobs/s counts durable
jobs.

    .venv/bin/python benchmarks/submit.py
    .venv/bin/python benchmarks/submit.py --clients 16 --seconds 10 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Aim: at least 500 jobs/s with 16 clients.
"""

import argparse
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import Api, percentile, service, temporary_postgres


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--processes", default=None, help="GRAFT_API_PROCESSES (default: shipped)")
    parser.add_argument("--postgres", default=None, help="a PostgreSQL server URL (else SQLite)")
    parser.add_argument("--one-key", action="store_true", help="every client uses the admin key")
    args = parser.parse_args()
    extra = {
        "GRAFT_MAX_QUEUED_JOBS": str(10**9),
        "GRAFT_MAX_ACTIVE_JOBS_PER_KEY": str(10**9),
        "GRAFT_RATE_LIMIT_PER_SECOND": "0",
    }
    if args.processes:
        extra["GRAFT_API_PROCESSES"] = args.processes
    with (
        temporary_postgres(args.postgres) as url,
        service(workers=0, database_url=url, extra_env=extra) as api,
    ):
        dataset = api.dataset()
        body = {
            "dataset_id": dataset,
            "target_column": "target",
            "model_name": "submitted",
            "hyperparameters": {"epochs": 1},
        }
        keys = [
            None
            if args.one_key
            else api.ok("POST", "/v1/keys", {"name": f"client {i}", "scopes": ["train", "read"]})[
                "secret"
            ]
            for i in range(args.clients)
        ]
        latencies: list[list[float]] = [[] for _ in range(args.clients)]
        errors: list[str] = []
        start = threading.Barrier(args.clients + 1)
        deadline = [0.0]

        def client(index: int) -> None:
            own = Api(api.port, key=keys[index])
            own.ok("GET", "/healthz")
            start.wait()
            while time.perf_counter() < deadline[0]:
                began = time.perf_counter()
                status, data = own.call("POST", "/v1/jobs/source-training", body)
                latencies[index].append((time.perf_counter() - began) * 1000)
                if status != 202:
                    errors.append(f"{status}: {data}")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for thread in threads:
            thread.start()
        deadline[0] = time.perf_counter() + args.seconds
        began = time.perf_counter()
        start.wait()
        for thread in threads:
            thread.join()
        elapsed = time.perf_counter() - began
        done = [x for per_client in latencies for x in per_client]
        queued = api.ok("GET", "/v1/jobs?status=queued&limit=1")
        print(
            f"{'PostgreSQL' if url else 'SQLite'}, {args.clients} clients, "
            f"{'one key' if args.one_key else 'a key each'}, {args.seconds:g} s, "
            f"API processes: {args.processes or 'shipped default'}, "
            f"{os.cpu_count()} cores: {len(done) / elapsed:.0f} jobs/s "
            f"({len(done)} submitted, {len(errors)} errors), latency p50 "
            f"{percentile(done, 50):.1f} ms, p99 {percentile(done, 99):.1f} ms"
        )
        assert queued["data"], "no job queued"
        if errors:
            print("first error:", errors[0])


if __name__ == "__main__":
    main()
