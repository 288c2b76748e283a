"""Every error as RFC 9457 problem+json: ours, FastAPI's validation, Starlette's 404/405."""

import functools
import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, IntegrityError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from app.errors import AppError
from app.schemas.predictions import nested_too_deeply

log = logging.getLogger(__name__)

PROBLEM_TYPE_BASE = "https://graft.dev/problems/"
_HTTP_CODES = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    406: ("not_acceptable", "Not acceptable"),
    413: ("request_too_large", "Content too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Unprocessable content"),
    500: ("internal_error", "Internal server error"),
}


def problem_response(
    status: int,
    code: str,
    title: str,
    detail: str,
    *,
    request: Request | None = None,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + code,
        "title": title,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if request is not None:
        body["instance"] = request.url.path
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(
        body, status_code=status, media_type="application/problem+json", headers=headers
    )


_PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_DOCUMENTED_METHODS = ("get", "put", "post", "delete", "patch")
_TEMPLATE_PARAMETER = re.compile(r"\{[^}/]+\}")


def allowed_methods(app: Any, scope: Scope) -> list[str]:
    """The methods of the resource this request's path names, for a 405's Allow.

    The router answers 405 from the first route whose path matched, so its own Allow lists
    that route's methods alone, while /v1/datasets has a GET and a POST route. The resource
    is the most literal path template of the API that matches (/v1/datasets/builtin, not
    /v1/datasets/{dataset_id}), and its methods are those the document lists for it: the
    Allow a client reads agrees with the document it was generated from. Paths outside the
    document (the docs pages) ask the routes themselves.
    """
    path = scope.get("path", "")
    matching = [
        (template.count("{"), template, item)
        for template, item in _documented_paths(app)
        if _template_pattern(template).fullmatch(path)
    ]
    if matching:
        _, _, item = min(matching, key=lambda found: found[0])
        return [m.upper() for m in _DOCUMENTED_METHODS if m in item]
    routes = getattr(app, "routes", ())
    return [
        method
        for method in _PROBED_METHODS
        if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in routes)
    ]


def _documented_paths(app: Any) -> list[tuple[str, dict[str, Any]]]:
    openapi = getattr(app, "openapi", None)
    if openapi is None:
        return []
    return list(openapi().get("paths", {}).items())


@functools.lru_cache(maxsize=256)
def _template_pattern(template: str) -> re.Pattern[str]:
    parts = _TEMPLATE_PARAMETER.split(template)
    return re.compile("[^/]+".join(re.escape(part) for part in parts))


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    return ".".join(str(part) for part in loc)


def _validation_errors(exc: RequestValidationError) -> list[dict[str, Any]]:
    errors = []
    for error in exc.errors():
        message = str(error.get("msg", "invalid value"))
        if error.get("type") == "json_invalid":
            message = f"invalid JSON: {error.get('ctx', {}).get('error', message)}"
        errors.append(
            {"loc": [str(p) if not isinstance(p, int) else p for p in error["loc"]], "msg": message}
        )
    return errors


def app_error_response(request: Request, exc: AppError) -> JSONResponse:
    """The problem document of an AppError: what the exception handler answers, and what
    the predict fast lane answers for the same error."""
    return problem_response(
        exc.status_code,
        exc.code,
        exc.title,
        exc.detail,
        request=request,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return app_error_response(request, exc)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = _validation_errors(exc)
    shown = "; ".join(f"{_location(e['loc'])}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return problem_response(
        422,
        "validation_error",
        "Unprocessable content",
        f"the request is not valid: {shown}{more}",
        request=request,
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _HTTP_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}; see /docs"
    elif exc.status_code == 405:
        allow = allowed_methods(request.app, request.scope)
        detail = (
            f"{request.method} is not allowed on {request.url.path}; it answers {', '.join(allow)}"
        )
        return problem_response(
            405, code, title, detail, request=request, headers={"Allow": ", ".join(allow)}
        )
    elif exc.status_code == 400 and "parsing the body" in detail:
        code, detail = "malformed_body", "the request body could not be parsed"
        if isinstance(exc.__cause__, RecursionError):  # json.loads on deeply nested JSON
            detail = nested_too_deeply().detail
    return problem_response(
        exc.status_code,
        code,
        title,
        detail,
        request=request,
        headers=getattr(exc, "headers", None),
    )


# PostgreSQL SQLSTATEs of a transaction that lost a race and may simply be retried.
_RETRYABLE_SQLSTATES = {"40001": "serialization failure", "40P01": "deadlock"}


def database_problem(exc: DBAPIError) -> tuple[int, str, str, str]:
    """(status, code, title, detail) for a database error that ended a request's write.

    Nothing of the statement or the driver's message reaches the client (they name tables
    and values); the full error is logged with the request path.
    """
    sqlstate = getattr(exc.orig, "sqlstate", None)
    message = str(exc.orig).lower()
    undone = "nothing was written"
    if isinstance(exc, IntegrityError):
        return (
            409,
            "conflict",
            "Conflict",
            f"the change conflicts with the current state (another request changed or "
            f"removed what it refers to); {undone}. Read the resource again and retry",
        )
    if sqlstate in _RETRYABLE_SQLSTATES:
        return (
            409,
            "concurrent_update",
            "Conflict",
            f"a concurrent request changed the same data ({_RETRYABLE_SQLSTATES[sqlstate]}); "
            f"{undone}; retry the request",
        )
    if "disk is full" in message or "no space" in message or sqlstate == "53100":
        return (
            503,
            "storage_full",
            "Service unavailable",
            f"the database has no space left; {undone}. Free space on the server and retry",
        )
    if "locked" in message or "busy" in message or sqlstate == "55P03":
        return (
            503,
            "database_busy",
            "Service unavailable",
            f"the database stayed locked by other writers for too long; {undone}; retry",
        )
    return (
        503,
        "database_unavailable",
        "Service unavailable",
        f"the database failed to store the change; {undone}; retry later",
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DBAPIError)
    status, code, title, detail = database_problem(exc)
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    headers = {"Retry-After": "1"} if status == 503 else None
    return problem_response(status, code, title, detail, request=request, headers=headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(
        500,
        "internal_error",
        "Internal server error",
        "the server failed to handle this request; it has been logged",
        request=request,
    )


def add_exception_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _unexpected)
