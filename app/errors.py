"""Domain errors: each carries its HTTP status and a stable snake_case code."""

from typing import Any


class AppError(Exception):
    status_code = 400
    title = "Bad request"

    def __init__(self, code: str, detail: str, *, errors: list[dict[str, Any]] | None = None):
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.errors = errors


class NotFound(AppError):
    status_code = 404
    title = "Not found"


class Conflict(AppError):
    status_code = 409
    title = "Conflict"


class Invalid(AppError):
    status_code = 422
    title = "Unprocessable content"


class TooLarge(AppError):
    status_code = 413
    title = "Content too large"


class UnsupportedMediaType(AppError):
    status_code = 415
    title = "Unsupported media type"


class NotReady(AppError):
    status_code = 503
    title = "Service unavailable"
