"""Why predictions resolve versions with raw SQL: the lookup against the ORM path.

A prediction resolves (name, version | alias | default) to a version on every request. In
steady state the registry view answers from memory; after any registry change (a new
version, an alias moved) or for a name not asked for since, it asks the database. This
measures one such lookup both ways, in-process, sequentially, on a registry of 50 models of
20 versions with aliases: `VersionLookup.find` (app/services/registry/resolution.py: raw SQL
on a per-thread driver connection on SQLite, a pooled connection elsewhere) and
`registry.resolve` in a read session (the ORM path routes and jobs use). Both give the same
answers (tests/services/test_version_lookup.py).

    .venv/bin/python benchmarks/version_lookup.py
    .venv/bin/python benchmarks/version_lookup.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test

Prints microseconds per lookup (median of 5 runs of 2,000 lookups) and the ratio.
"""

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from app.db import migrate
from app.db.session import Database
from app.ml import serialization
from app.services import registry

FIELDS = {
    "dataset_id": "ds_x",
    "task": "classification",
    "signature": {"inputs": [], "classes": ["a"], "target": "y"},
    "architecture": {},
    "hyperparameters": {},
    "preprocessing": {},
    "metrics": {},
    "size_bytes": 1,
    "sha256": "0" * 64,
    "memory_bytes": 1,
    "kind": "source",
    "strategy": None,
    "parent_name": None,
    "parent_version": None,
}
QUESTIONS = [(None, None), (7, None), (None, "production"), (None, "canary")]


def build(database: Database) -> None:
    weights = serialization.weights_to_bytes(torch.nn.Linear(1, 1))
    with database.session_scope() as session:
        for m in range(50):
            for _ in range(20):
                registry.register_version(session, name=f"m{m}", weights=weights, **FIELDS)
            registry.set_alias(session, f"m{m}", "production", 10)
            registry.set_alias(session, f"m{m}", "canary", 15)


def timed(lookups: int, ask: Callable[[str, int | None, str | None], object]) -> float:
    runs = []
    for _ in range(5):
        started = time.perf_counter()
        for i in range(lookups):
            version, alias = QUESTIONS[i % len(QUESTIONS)]
            ask(f"m{i % 50}", version, alias)
        runs.append((time.perf_counter() - started) / lookups * 1e6)
    return statistics.median(runs)


def measure(url: str, label: str) -> None:
    migrate.upgrade(url)
    database = Database(url)
    build(database)
    lookup = registry.VersionLookup(database)

    def orm(name: str, version: int | None, alias: str | None) -> object:
        with database.read_scope() as session:
            found = registry.resolve(session, name, version=version, alias=alias)
            return (found.id, found.version)

    fast = timed(2_000, lookup.find)
    slow = timed(2_000, orm)
    print(
        f"{label:10} raw SQL {fast:7.1f} us/lookup   ORM read session {slow:7.1f} us/lookup   "
        f"ORM / raw SQL {slow / fast:5.1f}x"
    )
    lookup.close()
    database.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", help="also measure on this PostgreSQL (a fresh database)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        measure(f"sqlite:///{folder}/graft.db", "SQLite")
    if args.postgres:
        from benchmarks._harness import temporary_postgres

        with temporary_postgres(args.postgres) as url:
            assert url is not None
            measure(url, "PostgreSQL")
    return 0


if __name__ == "__main__":
    sys.exit(main())
