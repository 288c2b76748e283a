import time
from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from fastapi.routing import APIRoute
from starlette.datastructures import QueryParams
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.problems import problem_response
from app.errors import AppError, Invalid, UnsupportedMediaType
from app.observability import Metrics
from app.schemas.common import MAX_INT32, problem_responses
from app.schemas.predictions import PredictRequest, PredictResponse, parse_predict_body
from app.services.predictions import Prediction, PredictionService, ResolvedVersion
from app.serving.dense import dense_instances

router = APIRouter(prefix="/models", tags=["predictions"])

# The endpoint takes the raw request (see predict), so its parameters and body are
# documented here rather than inferred from its signature.
_OPENAPI = {
    "parameters": [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "version",
            "in": "query",
            "required": False,
            "description": "A version number; give this or `alias`, not both.",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT32},
        },
        {
            "name": "alias",
            "in": "query",
            "required": False,
            "description": "An alias such as `production`.",
            "schema": {"type": "string"},
        },
    ],
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    },
}


@router.post(
    "/{name}/predict",
    response_model=PredictResponse,
    summary="Predict with a model",
    responses=problem_responses(404, 415, 422),
    openapi_extra=_OPENAPI,
)
async def predict(request: Request) -> Response:
    """Predict with a version, an alias, or by default `production`, else the latest."""
    return await handle_predict(request, request.path_params["name"])


async def handle_predict(request: Request, name: str) -> Response:
    """The predict route's work, shared by the FastAPI route and PredictFastLane.

    Predictions are the hot path, so this does by hand what FastAPI would do: it reads the
    parameters from the request, parses the body once (simdjson straight to a matrix for a
    bulk numeric body, else orjson) and checks its shape without PredictRequest, has the
    rows turned into a float32 matrix in one NumPy call, and writes the response with
    orjson straight from the output arrays, without a second pydantic pass. The OpenAPI
    document still describes the request and the response.
    """
    started = time.perf_counter()
    version, alias = _selector(request.scope["query_string"])
    _require_json(request.headers.get("content-type"))
    raw = await request.body()
    # A large all-numbers body goes to a matrix without Python objects (see dense_instances).
    matrix = dense_instances(raw)
    body = parse_predict_body(raw) if matrix is None else None
    service: PredictionService = request.app.state.predictions
    resolved = await service.resolve(name, version=version, alias=alias)
    # For request metrics by model version (see PredictFastLane).
    request.scope.setdefault("state", {})["model_version"] = resolved
    result = None
    if matrix is not None:
        result = await service.predict_matrix(resolved, matrix)
        rows = len(matrix)
    if result is None:
        if body is None:  # the version wants to check the rows one by one
            body = parse_predict_body(raw)
        result = await service.predict(
            resolved,
            instances=body.instances,
            records=body.records,
            booleans_possible=b"true" in raw or b"false" in raw,
        )
        rows = len(body.instances if body.instances is not None else body.records or [])
    metrics: Metrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe_prediction(
            resolved.name, resolved.version, rows, time.perf_counter() - started
        )
    return Response(_encode(resolved, result), media_type="application/json")


class PredictFastLane:
    """ASGI middleware that sends `POST /v1/models/{name}/predict` straight to handle_predict.

    FastAPI's routing and dependency solving cost about as much per request as the whole
    prediction of a small model; this lane skips them for the one route where that matters.
    Errors come out as the same problem+json documents the exception handlers write (an
    unexpected error still reaches the app's 500 handler). Other requests, and the route's
    OpenAPI description, are FastAPI's. Requests through the lane carry `scope["route"]`
    (the FastAPI route) and `scope["state"]["model_version"]` (a ResolvedVersion) for
    middleware that records metrics.
    """

    def __init__(self, app: ASGIApp, prefix: str = "/v1/models/") -> None:
        self.app = app
        self.prefix = prefix
        self._route: BaseRoute | None = None
        self._searched = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self._model_name(scope)
        if name is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._predict_route(scope)
        scope["path_params"] = {"name": name}
        request = Request(scope, receive)
        try:
            response = await handle_predict(request, name)
        except AppError as exc:
            response = problem_response(
                exc.status_code,
                exc.code,
                exc.title,
                exc.detail,
                request=request,
                errors=exc.errors,
                headers=exc.headers,
            )
        await response(scope, receive, send)

    def _model_name(self, scope: Scope) -> str | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root) :]
        if not (path.startswith(self.prefix) and path.endswith("/predict")):
            return None
        name = path[len(self.prefix) : -len("/predict")]
        return name if name and "/" not in name else None

    def _predict_route(self, scope: Scope) -> BaseRoute | None:
        if not self._searched:
            self._route = _find_route(scope["app"].routes)
            self._searched = True
        return self._route


def _find_route(routes: list[Any]) -> BaseRoute | None:
    for route in routes:
        if isinstance(route, APIRoute) and route.endpoint is predict:
            return route
        # Included routers: FastAPI keeps the original router behind a wrapper.
        nested = getattr(getattr(route, "original_router", route), "routes", None)
        if isinstance(nested, list) and nested is not routes:
            found = _find_route(nested)
            if found is not None:
                return found
    return None


def _selector(query_string: bytes) -> tuple[int | None, str | None]:
    if not query_string:
        return None, None
    query = QueryParams(query_string)
    alias = query.get("alias")
    text = query.get("version")
    version = None
    if text is not None:
        try:
            version = int(text)
        except ValueError:
            version = None
        if version is None or not 1 <= version <= MAX_INT32:
            message = f"expected a version number from 1 to {MAX_INT32}, got {text!r}"
            raise Invalid(
                "validation_error",
                f"the request is not valid: query.version: {message}",
                errors=[{"loc": ["query", "version"], "msg": message}],
            )
    if version is not None and alias is not None:
        raise Invalid("invalid_selector", "give either version or alias, not both")
    return version, alias


def _require_json(content_type: str | None) -> None:
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            "unsupported_media_type",
            f"expected a JSON body (Content-Type: application/json), got {media!r}",
        )


def _encode(resolved: ResolvedVersion, result: Prediction) -> bytes:
    body: dict[str, Any] = {
        "model": {"name": resolved.name, "version": resolved.version},
        "predictions": result.predictions,
    }
    if result.classes is not None:
        body["classes"] = result.classes
        body["probabilities"] = result.probabilities
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
