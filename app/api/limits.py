"""Request-body limits enforced while the body streams in, never after buffering it."""

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.problems import problem_response


def _limit_detail(limit: int) -> str:
    return (
        f"the request body is larger than the limit of {limit} bytes "
        "(GRAFT_MAX_UPLOAD_BYTES for dataset uploads, GRAFT_MAX_REQUEST_BYTES otherwise)"
    )


class _BodyTooLarge(HTTPException):
    # An HTTPException, because FastAPI turns any other error raised while it
    # parses the body into a generic 400.
    def __init__(self, limit: int) -> None:
        super().__init__(413, _limit_detail(limit), headers={"Connection": "close"})


class BodyLimitMiddleware:
    """413 for bodies over the limit: at once from Content-Length, else as bytes arrive.

    Dataset uploads get their own (larger) limit.
    """

    def __init__(self, app: ASGIApp, *, default_limit: int, upload_limit: int) -> None:
        self.app = app
        self.default_limit = default_limit
        self.upload_limit = upload_limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        is_upload = scope["path"].rstrip("/") == "/v1/datasets"
        limit = self.upload_limit if is_upload else self.default_limit
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await self._reject(scope, receive, send, limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._reject(scope, receive, send, limit)

    @staticmethod
    async def _reject(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = problem_response(
            413,
            "request_too_large",
            "Content too large",
            _limit_detail(limit),
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
