"""The predict fast lane: `POST /v1/models/{name}/predict` without FastAPI's routing and
dependency solving, which cost about as much per request as the whole prediction of a small
model. GRAFT_PREDICT_FAST_LANE=false turns it off; the route then answers alone.

Nothing here decides differently from the route:
- which requests it takes is decided by the object FastAPI's router matches the predict
  route with (its `matches`: the full path pattern and the method), not by a path
  comparison of its own;
- it sits inside every other middleware (host check, auth and scope, rate limits, the body
  limit, metrics and the access log), so they have judged the request before it gets here;
- the work is the route's own function (`predict_content`), and an error becomes the
  document the app's exception handler writes for it (`app_error_response`); an unexpected
  error is left to the app's 500 handler.
The suite runs the predict tests with the lane on and off and compares the answers.
"""

from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.auth import scope_header
from app.api.problems import app_error_response
from app.api.routes.predictions import predict, predict_content
from app.errors import AppError


class PredictFastLane:
    """ASGI middleware: requests the predict route matches go straight to its work."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._matcher: _Matcher | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        matched = self._match(scope)
        if matched is None:
            await self.app(scope, receive, send)
            return
        # What the router would have put there: the route, its endpoint and path parameters
        # (read by the metrics middleware and the access log).
        scope.update(matched)
        content_type = scope_header(scope, b"content-type")
        try:
            content = await predict_content(
                scope,
                scope["path_params"]["name"],
                None if content_type is None else content_type.decode("latin-1"),
                lambda: _read_body(receive),
            )
        except AppError as exc:
            await app_error_response(Request(scope, receive), exc)(scope, receive, send)
            return
        # What Response(content, media_type="application/json") sends, without building one.
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-length", str(len(content)).encode()),
                    (b"content-type", b"application/json"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _match(self, scope: Scope) -> dict[str, Any] | None:
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        matcher = self._matcher or self._find(scope["app"])
        if matcher is None:
            return None
        match, child = matcher.matches(scope)
        if match is not Match.FULL:
            return None
        return {**child, "route": matcher.route}

    def _find(self, app: FastAPI) -> "_Matcher | None":
        self._matcher = _predict_matcher(app.routes)
        return self._matcher


class _Matcher:
    """The object FastAPI's router matches the predict route with, and the route itself."""

    def __init__(self, matching: Any, route: APIRoute) -> None:
        self.matches = matching.matches
        self.route = route


def _predict_matcher(routes: list[BaseRoute]) -> _Matcher | None:
    for route in routes:
        if isinstance(route, APIRoute) and route.endpoint is predict:
            return _Matcher(route, route)
        # FastAPI 0.160 and later keep an included router behind a wrapper, and match its
        # routes through "effective route contexts" that hold the full path (prefixes and
        # all): the lane matches with the same context the router would.
        contexts = getattr(route, "effective_route_contexts", None)
        if contexts is None:
            continue
        for context in contexts():
            original = getattr(context, "original_route", None)
            if isinstance(original, APIRoute) and original.endpoint is predict:
                return _Matcher(context, original)
    return None


async def _read_body(receive: Receive) -> bytes:
    """The whole request body, as Request.body() reads it, without a Request."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
