from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from app.api.problems import problem_response
from app.services import readiness

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness", responses={503: {"description": "Not ready"}})
def readyz(request: Request) -> Any:
    """Database reachable, schema at the newest migration, local workers alive (or, with
    the Celery executor, the broker reachable)."""
    found = readiness.check(request.app.state, jobs=True)
    if not found.ready:
        detail = "; ".join(found.problems)
        return problem_response(503, "not_ready", "Service unavailable", detail, request=request)
    return JSONResponse({"status": "ready", "checks": found.checks})
