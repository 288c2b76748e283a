"""Isolation: predict latency p50/p99 while a job trains, beside the same with no job.

A real `graft serve` with one local worker whose torch threads are bounded by
GRAFT_WORKER_TORCH_THREADS; predictions go one at a time over a keep-alive connection.

    .venv/bin/python benchmarks/predict_during_training.py --requests 1000
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._harness import TERMINAL, Api, percentile, service

INSTANCE = [[6.7, 3.0, 5.2, 2.3]]


def latencies(api: Api, count: int) -> list[float]:
    measured = []
    for _ in range(count):
        start = time.perf_counter()
        api.ok("POST", "/v1/models/served/predict", {"instances": INSTANCE})
        measured.append(time.perf_counter() - start)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000, help="predictions per phase")
    parser.add_argument("--torch-threads", type=int, default=1, help="GRAFT_WORKER_TORCH_THREADS")
    args = parser.parse_args()
    env = {"GRAFT_WORKER_TORCH_THREADS": str(args.torch_threads)}
    with service(workers=1, extra_env=env) as api:
        iris = api.dataset("iris")
        served = api.wait(api.submit(iris, "served", epochs=30), TERMINAL)
        assert served["status"] == "succeeded", served
        latencies(api, 50)  # load the model into the cache, warm the connection
        idle = latencies(api, args.requests)

        # A job that trains far longer than the measurement, on a larger dataset and model.
        digits = api.dataset("digits")
        body = {
            "dataset_id": digits,
            "target_column": "target",
            "model_name": "background",
            "architecture": {"hidden_layers": [256, 256]},
            "hyperparameters": {"epochs": 10_000, "batch_size": 32},
        }
        job_id = api.ok("POST", "/v1/jobs/source-training", body)["id"]
        deadline = time.monotonic() + 120
        while api.ok("GET", f"/v1/jobs/{job_id}")["progress"]["epoch"] < 1:
            if time.monotonic() > deadline:
                raise SystemExit("the training job never got going")
            time.sleep(0.05)
        busy = latencies(api, args.requests)
        still_running = api.ok("GET", f"/v1/jobs/{job_id}")["status"] == "running"
        api.ok("POST", f"/v1/jobs/{job_id}/cancel")
        api.wait(job_id, TERMINAL)
    if not still_running:
        raise SystemExit("the training job ended during the measurement; it proves nothing")

    def row(name: str, values: list[float]) -> tuple[float, float]:
        p50, p99 = percentile(values, 50) * 1000, percentile(values, 99) * 1000
        print(f"  {name:<16} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")
        return p50, p99

    print(
        f"predict latency, {args.requests} requests per phase, "
        f"GRAFT_WORKER_TORCH_THREADS={args.torch_threads}"
    )
    idle_p50, idle_p99 = row("idle", idle)
    busy_p50, busy_p99 = row("while training", busy)
    ratio = busy_p99 / idle_p99
    verdict = "within" if ratio <= 1.5 else "OVER"
    print(
        f"  ratio training/idle: p50 {busy_p50 / idle_p50:.2f}x, p99 {ratio:.2f}x ({verdict} 1.5x)"
    )


if __name__ == "__main__":
    main()
