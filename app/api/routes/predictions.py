import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.datastructures import QueryParams
from starlette.types import Scope

from app.errors import Invalid, UnsupportedMediaType
from app.observability import Metrics
from app.schemas.common import MAX_INT32, problem_responses
from app.schemas.jobs import ALIAS_PATTERN
from app.schemas.predictions import (
    PredictBody,
    PredictRequest,
    PredictResponse,
    parse_large_predict_body,
    parse_predict_body,
    too_many_rows,
)
from app.services.predictions import Prediction, PredictionService, ResolvedVersion
from app.serving.dense import TooManyRows, dense_instances

router = APIRouter(prefix="/models", tags=["predictions"])

# Bodies over this size are parsed, checked, encoded and answered on a worker thread, in
# steps that each hold the GIL for a few milliseconds (see parse_large_predict_body), so
# that one large request cannot stall the event loop and every other request with it
# (parsing 16 MiB of rows at once held it for half a second). Below it the work is a few
# milliseconds at most and the thread's hand-offs would cost more than they spare: small
# requests, the hot path, stay on the loop.
OFF_LOOP_BODY_BYTES = 256 * 1024
# Values of the response encoded per step when it is built off the loop.
_ENCODE_STEP_VALUES = 32_768

# The endpoint takes the raw request (see predict), so its parameters and body are
# documented here rather than inferred from its signature.
_OPENAPI = {
    "parameters": [
        {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
        {
            "name": "version",
            "in": "query",
            "required": False,
            "description": "A version number. With `alias` too, the alias must point at "
            "this version (409 alias_mismatch otherwise).",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_INT32},
        },
        {
            "name": "alias",
            "in": "query",
            "required": False,
            "description": "An alias such as `production`.",
            "schema": {"type": "string", "pattern": ALIAS_PATTERN},
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
    responses=problem_responses(404, 409, 415, 422),
    openapi_extra=_OPENAPI,
)
async def predict(request: Request) -> Response:
    """Predict with a version, an alias, or by default `production`, else the latest."""
    return await handle_predict(request, request.path_params["name"])


async def handle_predict(request: Request, name: str) -> Response:
    """The predict route's work as a Response (the FastAPI route's)."""
    content = await predict_content(
        request.scope, name, request.headers.get("content-type"), request.body
    )
    return Response(content, media_type="application/json")


async def predict_content(
    scope: Scope,
    name: str,
    content_type: str | None,
    read_body: Callable[[], Awaitable[bytes]],
) -> bytes:
    """The predict route's work, shared by the FastAPI route and the fast lane: the JSON
    response body, or an AppError.

    Predictions are the hot path, so this does by hand what FastAPI would do: it reads the
    parameters from the request, parses the body once (simdjson straight to a matrix for a
    bulk numeric body, else orjson) and checks its shape without PredictRequest, has the
    rows turned into a float32 matrix in one NumPy call, and writes the response with
    orjson straight from the output arrays, without a second pydantic pass. The OpenAPI
    document still describes the request and the response.
    """
    started = time.perf_counter()
    version, alias = _selector(scope["query_string"])
    _require_json(content_type)
    raw = await read_body()
    state = scope["app"].state
    service: PredictionService = state.predictions
    max_rows = service.max_rows
    large = len(raw) > OFF_LOOP_BODY_BYTES
    if large:
        matrix, body = await asyncio.to_thread(_parsed, raw, max_rows, True)
    else:
        matrix, body = _parsed(raw, max_rows, False)
    resolved = await service.resolve(name, version=version, alias=alias)
    # For request metrics by model version (see app/api/fast_lane.py).
    scope.setdefault("state", {})["model_version"] = resolved
    result = None
    if matrix is not None:
        result = await service.predict_matrix(resolved, matrix, off_loop=large)
        rows = len(matrix)
    if result is None:
        if body is None:  # the version wants to check the rows one by one
            if large:
                body = await asyncio.to_thread(parse_large_predict_body, raw, max_rows)
            else:
                body = parse_predict_body(raw, max_rows)
        if large:  # 25 ms for 16 MiB
            booleans = await asyncio.to_thread(_booleans_possible, raw)
        else:
            booleans = _booleans_possible(raw)
        result = await service.predict(
            resolved,
            instances=body.instances,
            records=body.records,
            booleans_possible=booleans,
            off_loop=large,
        )
        rows = body.rows
    metrics: Metrics | None = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.observe_prediction(
            resolved.name, resolved.version, rows, time.perf_counter() - started
        )
    if large:
        return await asyncio.to_thread(_encode_in_steps, resolved, result)
    return _encode(resolved, result)


def _parsed(
    raw: bytes, max_rows: int | None, large: bool
) -> tuple[np.ndarray | None, PredictBody | None]:
    """The body as a matrix (a bulk body of numbers) or as parsed rows; one of the two.

    413 too_many_rows for more than `max_rows` rows, counted before the rows are copied.
    """
    # A large all-numbers body goes to a matrix without Python objects (see dense_instances).
    try:
        matrix = dense_instances(raw, max_rows)
    except TooManyRows as exc:
        raise too_many_rows(exc.rows, exc.limit) from None
    if matrix is not None:
        return matrix, None
    if large:
        return None, parse_large_predict_body(raw, max_rows)
    return None, parse_predict_body(raw, max_rows)


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


def _booleans_possible(raw: bytes) -> bool:
    return b"true" in raw or b"false" in raw


def _encode_in_steps(resolved: ResolvedVersion, result: Prediction) -> bytes:
    """_encode's bytes, with the long arrays written a step at a time.

    One orjson call for a million probabilities holds the GIL for a quarter of a second;
    steps of _ENCODE_STEP_VALUES let the event loop run in between.
    """
    model = orjson.dumps({"name": resolved.name, "version": resolved.version})
    parts = [b'{"model":', model, b',"predictions":', _array_in_steps(result.predictions)]
    if result.classes is not None:
        classes = orjson.dumps(result.classes, option=orjson.OPT_SERIALIZE_NUMPY)
        parts += [b',"classes":', classes, b',"probabilities":']
        parts.append(_array_in_steps(result.probabilities))
    parts.append(b"}")
    return b"".join(parts)


def _array_in_steps(values: Any) -> bytes:
    if values is None:
        return b"null"
    width = int(np.prod(values.shape[1:])) if isinstance(values, np.ndarray) else 1
    step = max(1, _ENCODE_STEP_VALUES // max(1, width))
    pieces = [
        orjson.dumps(values[start : start + step], option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
        for start in range(0, len(values), step)
    ]
    return b"[" + b",".join(pieces) + b"]"
