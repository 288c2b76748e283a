"""Open Inference Protocol (V2, as KServe and Triton speak it) over HTTP/REST.

Health, server and model metadata, readiness, and infer with JSON or binary tensor data.
A model name without a version means the version /v1 would use: alias `production`, else
the latest. Errors are `{"error": "..."}` (see errors.py).

The protocol's routes in one module, in the order its specification lists them.
"""

import asyncio
import time
import zlib
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from starlette.responses import Response

from app.api.routes.predictions import OFF_LOOP_BODY_BYTES
from app.api.v2 import mapping
from app.api.v2.errors import V2Error
from app.api.v2.tensors import DecodedRequest, Tensor, decode_request, encode_response
from app.errors import AppError, NotFound
from app.schemas.common import MAX_INT32
from app.schemas.v2 import (
    ErrorBody,
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ModelReady,
    ServerLive,
    ServerMetadata,
    ServerReady,
)
from app.services import inference, readiness
from app.services.predictions import Prediction, PredictionService, ResolvedVersion

if TYPE_CHECKING:
    # Types only: the API reaches the ORM through the services.
    from app.db.models import ModelVersion


router = APIRouter(prefix="/v2", tags=["inference protocol (v2)"])

SERVER_NAME = "graft"
EXTENSIONS = ["binary_tensor_data", "parameters"]
HEADER_LENGTH = "inference-header-content-length"


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody} for status in statuses}


async def _read_body(request: Request) -> bytes:
    return await request.body()


BodyDep = Annotated[bytes, Depends(_read_body)]


@router.get("/health/live", response_model=ServerLive, summary="Server liveness")
def server_live() -> dict[str, bool]:
    """The process is up."""
    return {"live": True}


@router.get(
    "/health/ready",
    response_model=ServerReady,
    summary="Server readiness",
    responses={503: {"model": ServerReady}},
)
def server_ready(request: Request) -> Response:
    """The database answers and its schema is at the newest migration.

    Worker processes are not required: inference never needs them.
    """
    found = readiness.check(request.app.state, jobs=False)
    if not found.ready:
        return JSONResponse({"ready": False, "error": "; ".join(found.problems)}, 503)
    return JSONResponse({"ready": True})


@router.get("", response_model=ServerMetadata, summary="Server metadata")
def server_metadata(request: Request) -> dict[str, Any]:
    """Name, version and the protocol extensions this server supports."""
    return {"name": SERVER_NAME, "version": request.app.version, "extensions": EXTENSIONS}


# The protocol types versions as strings; Graft's are 1, 2, 3…, and the path says so.
VersionPath = Annotated[
    str,
    Path(
        pattern=r"^[1-9][0-9]{0,9}$",
        description="A version number (1, 2, 3…), as a string as the protocol has it.",
        examples=["1"],
    ),
]


def _version_number(name: str, version: str) -> int:
    if not version.isdigit() or int(version) < 1:
        raise V2Error(400, f"model version must be a positive integer, got {version!r}")
    if int(version) > MAX_INT32:  # well formed, and no model has that many versions
        raise V2Error(404, f"model {name!r} has no version {version}")
    return int(version)


def _metadata(request: Request, name: str, version: str | None) -> ModelMetadata:
    with request.app.state.database.read_scope() as session:
        found = _resolve(session, name, version)
        return mapping.metadata(found, inference.version_numbers(session, name))


def _resolve(session: Any, name: str, version: str | None) -> "ModelVersion":
    number = None if version is None else _version_number(name, version)
    try:
        return inference.resolve(session, name, number)
    except NotFound as exc:
        raise V2Error(404, exc.detail) from exc


@router.get(
    "/models/{name}",
    response_model=ModelMetadata,
    summary="Model metadata (default version)",
    responses=_errors(404),
)
def model_metadata(request: Request, name: str) -> ModelMetadata:
    """Inputs and outputs of the version /v1 would use: alias `production`, else the latest."""
    return _metadata(request, name, None)


@router.get(
    "/models/{name}/versions/{version}",
    response_model=ModelMetadata,
    summary="Model metadata",
    responses=_errors(400, 404),
)
def model_version_metadata(request: Request, name: str, version: VersionPath) -> ModelMetadata:
    """Inputs and outputs of one version."""
    return _metadata(request, name, version)


def _ready(request: Request, name: str, version: str | None) -> dict[str, Any]:
    # Every stored version can serve: it is loaded into the cache on its first request.
    with request.app.state.database.read_scope() as session:
        found = _resolve(session, name, version)
    return {"name": found.model_name, "version": str(found.version), "ready": True}


@router.get(
    "/models/{name}/ready",
    response_model=ModelReady,
    summary="Model readiness (default version)",
    responses=_errors(404),
)
def model_ready(request: Request, name: str) -> dict[str, Any]:
    """200 when the model has a version to serve, 404 otherwise."""
    return _ready(request, name, None)


@router.get(
    "/models/{name}/versions/{version}/ready",
    response_model=ModelReady,
    summary="Model readiness",
    responses=_errors(400, 404),
)
def model_version_ready(request: Request, name: str, version: VersionPath) -> dict[str, Any]:
    """200 when the version exists, 404 otherwise."""
    return _ready(request, name, version)


def _inline_schema() -> dict[str, Any]:
    """The request's JSON schema with its definitions inlined.

    The body is read by hand (it may carry binary tensors after the JSON), so FastAPI does
    not document it; this puts the schema back into the OpenAPI document.
    """
    schema = InferenceRequest.model_json_schema()
    definitions = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            reference = node.get("$ref")
            if isinstance(reference, str) and reference.startswith("#/$defs/"):
                return resolve(definitions[reference.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(item) for item in node]
        return node

    resolved: dict[str, Any] = resolve(schema)
    return resolved


_INFER_DOCS: dict[str, Any] = {
    "response_model": InferenceResponse,
    "responses": _errors(400, 404, 413),
    "openapi_extra": {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": _inline_schema()},
                "application/octet-stream": {
                    "schema": {"type": "string", "format": "binary"},
                    "description": "The JSON request, then the binary tensors; its length "
                    "goes in the Inference-Header-Content-Length header.",
                },
            },
        }
    },
}


@router.post("/models/{name}/infer", summary="Infer (default version)", **_INFER_DOCS)
async def infer(request: Request, name: str, body: BodyDep) -> Response:
    """Predict with the version /v1 would use: alias `production`, else the latest."""
    return await _infer(request, body, name, None)


@router.post("/models/{name}/versions/{version}/infer", summary="Infer", **_INFER_DOCS)
async def infer_version(
    request: Request, name: str, version: VersionPath, body: BodyDep
) -> Response:
    """Predict with one version."""
    return await _infer(request, body, name, version)


def _find(state: Any, name: str, version: str | None) -> "ModelVersion":
    with state.database.read_scope() as session:
        return _resolve(session, name, version)


async def _infer(request: Request, body: bytes, name: str, version: str | None) -> Response:
    """Large bodies (over OFF_LOOP_BODY_BYTES once inflated, as for /v1) are decoded,
    checked, predicted and encoded on worker threads, in steps that each hold the GIL
    briefly, so that one of them cannot stall the event loop."""
    state = request.app.state
    encoding = request.headers.get("content-encoding")
    if encoding is not None and encoding.strip().lower() not in ("", "identity"):
        # Inflating is cheap to ask for and may take a while: never on the loop.
        body = await asyncio.to_thread(_decompressed, body, encoding, state)
    header_length = _header_length(request)
    # The message (its encoding and size) first, then the model, then what the body says:
    # a body meant for a model that does not exist is a 404, whatever it holds.
    found = await run_in_threadpool(_find, state, name, version)
    # For the access log's model and version, as /v1's predict sets it.
    request.scope.setdefault("state", {})["model_version"] = ResolvedVersion(
        found.id, found.model_name, found.version
    )
    service: PredictionService = state.predictions
    large = len(body) > OFF_LOOP_BODY_BYTES
    decoded = await _decoded(body, header_length, service.max_rows, large)
    header = decoded.header
    started = time.perf_counter()
    try:
        if large:
            wanted, binary = _selected_outputs(header, mapping.output_names(found))
            prediction, rows = await _predict_large(service, found, decoded.inputs)
            result = {
                "model": {"name": found.model_name, "version": found.version},
                **prediction.as_dict(),
            }
        else:
            batch = mapping.rows_for(found, decoded.inputs)
            wanted, binary = _selected_outputs(header, mapping.output_names(found))
            result = await inference.predict_rows(service, found, batch)
            rows = len(batch)
    except AppError as exc:
        raise V2Error(400 if exc.status_code == 422 else exc.status_code, exc.detail) from exc
    elapsed = time.perf_counter() - started
    metrics = getattr(state, "metrics", None)
    if metrics is not None:
        metrics.observe_prediction(found.model_name, found.version, rows, elapsed)
    response_header: dict[str, Any] = {
        "model_name": found.model_name,
        "model_version": str(found.version),
    }
    if header.id is not None:
        response_header["id"] = header.id
    if large:
        content, json_length = await asyncio.to_thread(
            _response, found, result, wanted, binary, response_header, True
        )
    else:
        content, json_length = _response(found, result, wanted, binary, response_header, False)
    if json_length is None:
        return Response(content, media_type="application/json")
    return Response(
        content,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


def _response(
    found: "ModelVersion",
    result: dict[str, Any],
    wanted: list[str],
    binary: set[str],
    response_header: dict[str, Any],
    steps: bool,
) -> tuple[bytes, int | None]:
    outputs = [o for o in mapping.outputs_from_prediction(found, result) if o.name in wanted]
    outputs.sort(key=lambda o: wanted.index(o.name))
    return encode_response(response_header, outputs, binary, steps=steps)


async def _decoded(
    body: bytes, header_length: int | None, max_rows: int | None, large: bool
) -> DecodedRequest:
    if large:
        return await asyncio.to_thread(decode_request, body, header_length, max_rows)
    return decode_request(body, header_length, max_rows)


async def _predict_large(
    service: PredictionService, found: "ModelVersion", tensors: list[Tensor]
) -> tuple[Prediction, int]:
    """inference.predict_rows for a large request: through the same PredictionService,
    with the rows checked and encoded off the event loop, and a numeric matrix passed as
    one array rather than as rows of Python numbers."""
    resolved = ResolvedVersion(id=found.id, name=found.model_name, version=found.version)
    matrix = await asyncio.to_thread(mapping.matrix_for, found, tensors)
    if matrix is not None:
        prediction = await service.predict_matrix(resolved, matrix, off_loop=True)
        if prediction is not None:
            return prediction, len(matrix)
    rows = await asyncio.to_thread(mapping.rows_for, found, tensors)
    # Tensors carry no JSON booleans (a BOOL tensor arrives as 0 and 1).
    prediction = await service.predict(
        resolved, instances=rows, booleans_possible=False, off_loop=True
    )
    return prediction, len(rows)


def _header_length(request: Request) -> int | None:
    raw = request.headers.get(HEADER_LENGTH)
    if raw is None:
        return None
    if not raw.strip().isdigit():
        raise V2Error(400, f"Inference-Header-Content-Length must be an integer, got {raw!r}")
    return int(raw)


def _decompressed(body: bytes, encoding: str | None, state: Any) -> bytes:
    """The body, inflated when tritonclient compressed it (gzip or deflate)."""
    if encoding is None or encoding.strip().lower() in ("", "identity"):
        return body
    kind = encoding.strip().lower()
    if kind not in ("gzip", "deflate"):
        raise V2Error(400, f"Content-Encoding {encoding!r} is not supported; use gzip or deflate")
    limit: int = state.settings.max_request_bytes
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if kind == "gzip" else zlib.MAX_WBITS)
    try:
        inflated = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise V2Error(400, f"the body is not valid {kind} data: {exc}") from exc
    if len(inflated) > limit or inflater.unconsumed_tail:
        raise V2Error(413, f"the inflated body is larger than the limit of {limit} bytes")
    return inflated


def _selected_outputs(header: InferenceRequest, available: list[str]) -> tuple[list[str], set[str]]:
    """The outputs to return, in the order asked for, and those to send as binary data."""
    default_binary = _flag(header.parameters, "binary_data_output", default=False)
    if not header.outputs:
        return available, set(available) if default_binary else set()
    wanted: list[str] = []
    binary = set()
    for output in header.outputs:
        if output.name not in available:
            raise V2Error(
                400, f"unknown output {output.name!r}; this model's outputs are {available}"
            )
        if output.name in wanted:
            raise V2Error(400, f"output {output.name!r} is asked for more than once")
        if output.parameters and "classification" in output.parameters:
            raise V2Error(
                400,
                "the classification extension is not supported; ask for 'probabilities', "
                "whose columns follow the metadata's 'classes'",
            )
        wanted.append(output.name)
        if _flag(output.parameters, "binary_data", default=default_binary):
            binary.add(output.name)
    return wanted, binary


def _flag(parameters: dict[str, Any] | None, key: str, *, default: bool) -> bool:
    value = (parameters or {}).get(key, default)
    if not isinstance(value, bool):
        raise V2Error(400, f"parameter {key!r} must be true or false, got {value!r}")
    return value
