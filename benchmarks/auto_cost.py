"""What `strategy: "auto"` costs against one `parameter` job, through the real job runner.

Creates a throw-away SQLite database, trains a source model, then runs fine-tuning jobs on
the same target with `parameter` (which also cross-validates itself and the scratch baseline
for its transfer report) and with `auto` (every candidate), in this process as a worker would,
and prints the wall time of each job (started_at to finished_at).

    .venv/bin/python benchmarks/auto_cost.py             # digits 0-4 -> 5-9, 100 epochs
    .venv/bin/python benchmarks/auto_cost.py --quick     # iris, 30 epochs
"""

import argparse
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastapi.testclient import TestClient

from app.config import Settings
from app.db import migrate
from app.db.session import Database
from app.jobs import queue
from app.jobs.runner import WorkerContext, run_job
from app.main import create_app


def run_all(database: Database) -> None:
    context = WorkerContext(worker_id=queue.make_worker_id())
    while True:
        with database.session_scope() as session:
            job_id = queue.claim_next(session, context.worker_id)
        if job_id is None:
            return
        run_job(database, job_id, context)


def seconds(job: dict[str, Any]) -> float:
    started = datetime.fromisoformat(job["started_at"])
    finished = datetime.fromisoformat(job["finished_at"])
    return (finished - started).total_seconds()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="iris and 30 epochs")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    name, split, label_rows = ("iris", 100, 150) if args.quick else ("digits", 900, 1000)
    epochs = 30 if args.quick else 100
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        migrate.upgrade(f"sqlite:///{data_dir / 'graft.db'}")
        # It measures training, not the door: keys and the access log are off, and the
        # TestClient's host allowed.
        settings = Settings(
            data_dir=data_dir,
            workers=0,
            auth="disabled",
            allowed_hosts=["testserver"],
            access_log=False,
        )
        database = Database(settings.resolved_database_url)
        with TestClient(create_app(settings)) as client:

            def dataset(start: int, stop: int) -> str:
                body = {"name": name, "start": start, "stop": stop, "shuffle_seed": 0}
                response = client.post("/v1/datasets/builtin", json=body)
                assert response.status_code == 201, response.text
                dataset_id: str = response.json()["id"]
                return dataset_id

            source, target = dataset(0, split), dataset(split, label_rows)
            hyper = {"epochs": epochs, "learning_rate": 0.01, "batch_size": 16, "seed": 0}
            client.post(
                "/v1/jobs/source-training",
                json={
                    "dataset_id": source,
                    "target_column": "target",
                    "model_name": "src",
                    "architecture": {"hidden_layers": [64, 64]},
                    "hyperparameters": hyper,
                },
            )
            run_all(database)
            jobs = {}
            # Each as a user gets it: parameter on the source's scaling (its default), auto
            # searching the scaling too (its default).
            for strategy in ("parameter", "auto"):
                response = client.post(
                    "/v1/jobs/fine-tuning",
                    json={
                        "base_model": {"name": "src"},
                        "dataset_id": target,
                        "target_column": "target",
                        "model_name": f"t-{strategy}",
                        "strategy": strategy,
                        "hyperparameters": hyper,
                    },
                )
                assert response.status_code == 202, response.text
                jobs[strategy] = response.json()["id"]
            run_all(database)
            times = {}
            for strategy, job_id in jobs.items():
                job = client.get(f"/v1/jobs/{job_id}").json()
                assert job["status"] == "succeeded", job
                times[strategy] = seconds(job)
                report = job["metrics"]["transfer_report"]
                print(
                    f"{strategy:>9}: {times[strategy]:6.1f} s; picked "
                    f"{' + '.join(report['members'])}, cv "
                    f"{report['score']['mean']:.3f} ± {report['score']['std']:.3f}, gain "
                    f"{report['transfer_gain']:+.3f}"
                )
        database.dispose()
    print(
        f"{name}: {label_rows - split} target rows, {epochs} epochs: auto costs "
        f"{times['auto'] / times['parameter']:.1f}x one parameter job"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
