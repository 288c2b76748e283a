"""Whether this replica can serve: decided here, for /readyz and the inference protocol's
/v2/health/ready alike, so the two can never disagree on the database or the schema."""

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text

from app.db import migrate


@dataclass
class Readiness:
    checks: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems


def check(state: Any, *, jobs: bool) -> Readiness:
    """The database answers and its schema is at the newest migration; with `jobs`, also
    the executor: the local workers alive, or the Celery broker reachable. (Inference needs
    no workers, so /v2/health/ready asks without.)"""
    found = Readiness()
    try:
        with state.database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        found.checks["database"] = "ok"
        current, head = migrate.current_revision(state.database.engine), migrate.head_revision()
        found.checks["schema"] = {"current": current, "head": head}
        if current != head:
            found.problems.append(f"schema is at {current}, expected {head}: run `graft migrate`")
    except Exception as exc:
        found.checks["database"] = f"unreachable: {type(exc).__name__}"
        found.problems.append("the database is unreachable")
    if not jobs:
        return found
    if state.settings.executor == "celery":
        # Workers live on other machines and come and go; what this replica needs is a
        # broker to hand jobs to. Lost workers' jobs are recovered by the other workers.
        error = state.dispatcher.broker_error()
        found.checks["executor"] = {"type": "celery", "broker": error or "ok"}
        if error is not None:
            found.problems.append(f"the Celery broker is unreachable ({error})")
    else:
        expected = state.settings.workers
        alive = state.worker_pool.alive() if state.worker_pool is not None else 0
        found.checks["workers"] = {"expected": expected, "alive": alive}
        if alive < expected:
            found.problems.append(f"{alive} of {expected} local worker processes are alive")
    return found
