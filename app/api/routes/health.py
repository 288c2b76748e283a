from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from app.api.problems import problem_response
from app.db import migrate

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"description": "Not ready"}})
def readyz(request: Request) -> Any:
    """Database reachable, schema at the newest migration, local workers alive (or, with
    the Celery executor, the broker reachable)."""
    state = request.app.state
    checks: dict[str, Any] = {}
    problems = []
    try:
        with state.database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
        current, head = migrate.current_revision(state.database.engine), migrate.head_revision()
        checks["schema"] = {"current": current, "head": head}
        if current != head:
            problems.append(f"schema is at {current}, expected {head}: run `graft migrate`")
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
        problems.append("the database is unreachable")
    if state.settings.executor == "celery":
        # Workers live on other machines and come and go; what this replica needs is a
        # broker to hand jobs to. Lost workers' jobs are recovered by the other workers.
        error = state.dispatcher.broker_error()
        checks["executor"] = {"type": "celery", "broker": error or "ok"}
        if error is not None:
            problems.append(f"the Celery broker is unreachable ({error})")
    else:
        expected = state.settings.workers
        alive = state.worker_pool.alive() if state.worker_pool is not None else 0
        checks["workers"] = {"expected": expected, "alive": alive}
        if alive < expected:
            problems.append(f"{alive} of {expected} local worker processes are alive")
    if problems:
        response = problem_response(
            503, "not_ready", "Service unavailable", "; ".join(problems), request=request
        )
        return response
    return JSONResponse({"status": "ready", "checks": checks})
