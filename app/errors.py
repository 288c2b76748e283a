"""Domain errors: each carries its HTTP status and a stable snake_case code."""

from typing import Any


class AppError(Exception):
    status_code = 400
    title = "Bad request"

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.errors = errors
        self.headers = headers


class NotFound(AppError):
    status_code = 404
    title = "Not found"


class Conflict(AppError):
    status_code = 409
    title = "Conflict"


class Invalid(AppError):
    status_code = 422
    title = "Unprocessable content"


class Unauthorized(AppError):
    status_code = 401
    title = "Unauthorized"


class Forbidden(AppError):
    status_code = 403
    title = "Forbidden"


class TooManyRequests(AppError):
    """429; `retry_after` seconds go out as the Retry-After header."""

    status_code = 429
    title = "Too many requests"

    def __init__(self, code: str, detail: str, *, retry_after: float) -> None:
        super().__init__(code, detail, headers={"Retry-After": str(max(1, round(retry_after)))})


class TooLarge(AppError):
    status_code = 413
    title = "Content too large"


class UnsupportedMediaType(AppError):
    status_code = 415
    title = "Unsupported media type"


class NotReady(AppError):
    status_code = 503
    title = "Service unavailable"
