"""Batch prediction and evaluation memory: peak RSS flat from 10k to 1M rows.

For each size, a CSV of that many rows (Iris-like features with noise, an id column and the
label) is uploaded through the service layer, then one batch prediction job and one
evaluation job run in a fresh worker process each, as `graft worker` would run them
(defaults: chunks of 10,000 rows, CSV out). The worker process imports everything and opens
the database first; its peak resident memory is then reset (Linux `clear_refs`), so the
peak measured is the process's peak while the job runs; "added" is that peak minus the
resident memory just before the job. Reported beside them: wall time and rows per second.
SQLite (the default database), one torch thread, log level warning.

    .venv/bin/python benchmarks/batch_memory.py                      # 10k, 100k, 1M rows
    .venv/bin/python benchmarks/batch_memory.py --rows 10000,100000  # quicker

Aim: the worker's peak RSS at 1M rows within 1.2x of its peak at 10k rows (flat: memory
follows the chunk, not the dataset). The part the job adds is a few fixed buffers (a stored
piece, the writer's piece, SQLite's page cache) plus about two chunks: it is smallest at 10k
rows, where the file is smaller than one piece and there is only one chunk.
"""

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

HERE = Path(__file__).resolve()


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def child(database_url: str) -> None:
    """Claim the one queued job and run it; print what it cost."""
    import logging

    import torch

    from app.db.session import Database
    from app.jobs import queue
    from app.jobs.runner import WorkerContext, run_job

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    database = Database(database_url)
    context = WorkerContext(worker_id=queue.make_worker_id())
    with database.session_scope() as session:
        job_id = queue.claim_next(session, context.worker_id)
    assert job_id is not None
    # Forget the peak of imports and start-up: what follows is the job's alone.
    try:
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = _rss_kib("VmRSS")
    started = time.perf_counter()
    status = run_job(database, job_id, context)
    seconds = time.perf_counter() - started
    peak = _rss_kib("VmHWM")
    print(
        "CHILD_JSON "
        + json.dumps(
            {
                "job_id": job_id,
                "status": str(status),
                "seconds": seconds,
                "rss_before_mib": before / 1024,
                "peak_mib": peak / 1024,
                "added_mib": (peak - before) / 1024,
                "peak_reset": reset,
            }
        )
    )


def _make_csv(path: Path, rows: int) -> None:
    import numpy as np
    from sklearn.datasets import load_iris

    iris = load_iris(as_frame=True)
    features = iris.frame.drop(columns="target")
    names = [str(iris.target_names[code]) for code in iris.frame["target"]]
    rng = np.random.default_rng(0)
    with path.open("w") as out:
        for start in range(0, rows, 100_000):
            count = min(100_000, rows - start)
            picks = rng.integers(0, len(features), count)
            chunk = features.iloc[picks].reset_index(drop=True)
            chunk = chunk + rng.normal(0, 0.05, chunk.shape).round(3)
            chunk.insert(0, "row_id", np.arange(start, start + count))
            chunk["target"] = [names[i] for i in picks]
            chunk.to_csv(out, index=False, header=start == 0)


def _run_child(database_url: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(HERE), "--child", database_url],
        capture_output=True,
        text=True,
        check=True,
    )
    for line in done.stdout.splitlines():
        if line.startswith("CHILD_JSON "):
            result: dict[str, Any] = json.loads(line.removeprefix("CHILD_JSON "))
            return result
    raise RuntimeError(f"the worker printed no result:\n{done.stdout}\n{done.stderr}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", default="10000,100000,1000000")
    parser.add_argument("--child", metavar="DATABASE_URL")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    from app.config import Settings
    from app.db import migrate
    from app.db.session import Database
    from app.jobs import queue
    from app.jobs.runner import WorkerContext, run_job
    from app.schemas.datasets import BuiltinDatasetCreate
    from app.schemas.jobs import BatchPredictionCreate, EvaluationCreate, SourceTrainingCreate
    from app.services import datasets as datasets_service
    from app.services import job_drafts, row_job_drafts
    from app.services import jobs as jobs_service

    sizes = [int(size) for size in args.rows.split(",")]
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, SQLite")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder)
        url = f"sqlite:///{data_dir / 'graft.db'}"
        migrate.upgrade(url)
        database = Database(url)
        settings = Settings(data_dir=data_dir, workers=0)
        with database.session_scope() as session:
            iris = datasets_service.create_builtin(session, BuiltinDatasetCreate(name="iris"))
            iris_id = iris.id
        training = SourceTrainingCreate.model_validate(
            {
                "dataset_id": iris_id,
                "target_column": "target",
                "model_name": "bench",
                "hyperparameters": {"epochs": 20},
            }
        )
        jobs_service.submit(database, partial(job_drafts.draft_source_training, request=training))
        context = WorkerContext(worker_id=queue.make_worker_id())
        with database.session_scope() as session:
            job_id = queue.claim_next(session, context.worker_id)
        assert job_id is not None
        run_job(database, job_id, context)
        for rows in sizes:
            path = data_dir / f"rows-{rows}.csv"
            _make_csv(path, rows)
            with database.session_scope() as session, path.open("rb") as file:
                dataset = datasets_service.create_from_upload(
                    session,
                    filename=path.name,
                    content_type="text/csv",
                    file=file,
                    name=None,
                    settings=settings,
                )
                dataset_id, size = dataset.id, dataset.size_bytes
            path.unlink()
            kinds = {
                "batch prediction": partial(
                    row_job_drafts.draft_batch_prediction,
                    request=BatchPredictionCreate.model_validate(
                        {
                            "model": {"name": "bench"},
                            "dataset_id": dataset_id,
                            "id_columns": ["row_id"],
                        }
                    ),
                ),
                "evaluation": partial(
                    row_job_drafts.draft_evaluation,
                    request=EvaluationCreate.model_validate(
                        {"models": [{"name": "bench"}], "dataset_id": dataset_id}
                    ),
                ),
            }
            for kind, draft in kinds.items():
                jobs_service.submit(database, draft)
                measured = _run_child(url)
                assert measured["status"] == "succeeded", measured
                measured.update(kind=kind, rows=rows, file_mib=size / 2**20)
                results.append(measured)
                print(
                    f"{kind:16} {rows:>9,} rows ({size / 2**20:6.1f} MiB file): "
                    f"{measured['seconds']:6.2f} s, {rows / measured['seconds']:>9,.0f} rows/s, "
                    f"RSS before {measured['rss_before_mib']:6.1f} MiB, job added "
                    f"{measured['added_mib']:6.1f} MiB",
                    flush=True,
                )
        database.dispose()
    print()
    print("| job | rows | file | time | rows/s | peak RSS | vs smallest | added by the job |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kind in ("batch prediction", "evaluation"):
        mine = [r for r in results if r["kind"] == kind]
        first = mine[0]["peak_mib"]
        for r in mine:
            print(
                f"| {kind} | {r['rows']:,} | {r['file_mib']:.1f} MiB | {r['seconds']:.1f} s | "
                f"{r['rows'] / r['seconds']:,.0f} | {r['peak_mib']:.0f} MiB | "
                f"{r['peak_mib'] / first:.2f}x | {r['added_mib']:.1f} MiB |"
            )
    print("BENCH_JSON " + json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
