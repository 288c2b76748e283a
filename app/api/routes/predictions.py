import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from app.api.deps import ModelCacheDep, ReadSessionDep
from app.errors import Invalid
from app.observability import record_unbatched_prediction
from app.schemas.common import MAX_INT32, problem_responses
from app.schemas.predictions import PredictRequest, PredictResponse
from app.services import predictions as predictions_service

router = APIRouter(prefix="/models", tags=["predictions"])


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    summary="Predict with a model",
    responses=problem_responses(404, 422),
)
def predict(
    request: Request,
    session: ReadSessionDep,
    cache: ModelCacheDep,
    name: str,
    body: PredictRequest,
    version: Annotated[int | None, Query(ge=1, le=MAX_INT32)] = None,
    alias: Annotated[str | None, Query()] = None,
) -> dict[str, Any]:
    """Predict with a version, an alias, or by default `production`, else the latest."""
    if version is not None and alias is not None:
        raise Invalid("invalid_selector", "give either version or alias, not both")
    started = time.perf_counter()
    result = predictions_service.predict(session, cache, name, body, version=version, alias=alias)
    record_unbatched_prediction(request, result, time.perf_counter() - started)
    return result
