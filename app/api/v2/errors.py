"""Errors under /v2 speak the protocol's `{"error": "..."}`, not problem+json.

The app's handlers (app/api/problems.py) turn every error into problem+json; wrapping them
here keeps that true for every other path and gives /v2 clients, tritonclient among them,
the body they parse, whether the error came from a route, the router (404, 405) or a crash.
"""

import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from app.api.problems import allowed_methods
from app.errors import AppError

log = logging.getLogger(__name__)

PREFIX = "/v2"

Handler = Callable[[Request, Exception], Response | Awaitable[Response]]


class V2Error(Exception):
    """An error answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def is_v2_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def _as_v2(request: Request, exc: Exception) -> Response:
    if isinstance(exc, V2Error):
        return error_response(exc.status, exc.message)
    if isinstance(exc, AppError):
        # The protocol has no 422: whatever a client sent wrong is a 400.
        status = 400 if exc.status_code == 422 else exc.status_code
        return error_response(status, exc.detail, exc.headers)
    if isinstance(exc, RequestValidationError):
        shown = "; ".join(
            f"{'.'.join(str(p) for p in error['loc'])}: {error['msg']}" for error in exc.errors()
        )
        return error_response(400, f"the request is not valid: {shown}")
    if isinstance(exc, StarletteHTTPException):
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route matches {request.method} {request.url.path}"
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:
            allow = allowed_methods(request.app, request.scope)
            message = f"{request.method} is not allowed on {request.url.path}"
            headers = {"Allow": ", ".join(allow)}
        return error_response(exc.status_code, message, headers)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(500, "the server failed to handle this request; it has been logged")


def _scoped(original: Handler) -> Handler:
    async def handler(request: Request, exc: Exception) -> Response:
        if is_v2_path(request.url.path):
            return _as_v2(request, exc)
        if inspect.iscoroutinefunction(original):
            response: Response = await original(request, exc)
            return response
        return await run_in_threadpool(original, request, exc)  # type: ignore[arg-type]

    return handler


def scope_exception_handlers(app: FastAPI) -> None:
    """Answer errors under /v2 in the protocol's form; every other path keeps its handlers.

    Call after the app's own handlers are registered and before it serves its first request.
    """
    handlers: dict[Any, Handler] = app.exception_handlers
    for exc_class, original in list(handlers.items()):
        handlers[exc_class] = _scoped(original)
    handlers[V2Error] = _v2_error


async def _v2_error(request: Request, exc: Exception) -> Response:
    return _as_v2(request, exc)
