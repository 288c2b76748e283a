"""The request metrics middleware: one counter and one histogram observation per
request, labelled by the matched route's template (a bounded label set)."""

import logging
import time

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access_log import AccessLog, request_id
from app.api.auth import KEY_ID, scope_header
from app.observability.registry import Metrics

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Distinct (route, prefix) pairs remembered; raw prefixes beyond it are worked out each time.
_MAX_CACHED_TEMPLATES = 4096


class RequestMetricsMiddleware:
    """Counts and times every HTTP request by method, route template and status, and hands
    each request's line to the access log when there is one.

    Pure ASGI (no BaseHTTPMiddleware): one wrapped `send` and a dict lookup per request. With
    an access log, every response carries `X-Request-ID`: the client's if it sent a usable
    one, else a new one, the same as in the request's log line.
    """

    def __init__(
        self, app: ASGIApp, *, metrics: Metrics, access_log: AccessLog | None = None
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log
        self._templates: dict[tuple[int, str], str] = {}
        self._documented_paths: frozenset[str] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering
        access_log = self.access_log
        if access_log is not None:
            wall = time.time()
            rid = request_id(scope_header(scope, b"x-request-id"))
            rid_header = (b"x-request-id", rid.encode("ascii"))

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if access_log is not None:
                    message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            route = self._template(scope)
            seconds = time.perf_counter() - started
            self.metrics.observe_request(method, route, status, seconds)
            if access_log is not None and access_log.keep(route, status):
                state = scope.get("state")
                resolved = state.get("model_version") if state else None
                client = scope.get("client")
                access_log.record(
                    (
                        wall,
                        rid,
                        method,
                        route,
                        scope["path"],
                        status,
                        seconds,
                        client[0] if client else None,
                        scope.get(KEY_ID),
                        resolved.name if resolved is not None else None,
                        resolved.version if resolved is not None else None,
                    )
                )

    def _template(self, scope: Scope) -> str:
        """The matched route's full template, `<unmatched>` when no route matched.

        The router leaves the matched route in scope["route"] once it has matched. FastAPI
        keeps included routers nested, so that route's `path` may lack the prefixes of the
        routers above it (`/models/{name}/predict` under `/v1`); the prefix is then the part
        of the request path before the route's own segments, accepted only when the joined
        template is one the app documents. Either way the label is a route's template,
        never a raw path, so its values stay bounded.
        """
        route = scope.get("route")
        template = getattr(route, "path", None)
        if not isinstance(template, str) or not template:
            return UNMATCHED_ROUTE
        if isinstance(route, Mount):
            return template + "/{path}"
        prefix = scope["path"].rsplit("/", template.count("/"))[0]
        if not prefix:
            return template
        key = (id(route), prefix)
        found = self._templates.get(key)
        if found is None:
            joined = prefix + template
            found = joined if joined in self._documented(scope) else template
            if len(self._templates) < _MAX_CACHED_TEMPLATES:
                self._templates[key] = found
        return found

    def _documented(self, scope: Scope) -> frozenset[str]:
        if self._documented_paths is None:
            app = scope.get("app")
            openapi = getattr(app, "openapi", None)
            try:
                paths = openapi().get("paths", {}) if callable(openapi) else {}
            except Exception:  # a broken schema must not break every request
                log.warning("metrics: no OpenAPI paths to name routes by", exc_info=True)
                paths = {}
            self._documented_paths = frozenset(paths)
        return self._documented_paths
