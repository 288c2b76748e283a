"""The one door: every request passes the Host check, then the key and scope check.

Which scope a request needs follows from its method and path alone, so the check costs a few
string comparisons and one dictionary lookup (app.services.keys.KeyRing), the same for the
predict fast lane, /v2, event streams, weight downloads and /metrics:

- public: liveness and readiness, the docs pages and their assets, the OpenAPI document;
- `admin`: everything under /v1/keys;
- `predict`: POST .../predict (/v1) and POST .../infer (/v2);
- `read`: any other GET or HEAD;
- `train`: any other write (datasets, jobs, aliases, deletes).
An `admin` key may do everything.
"""

import logging
import math
import time
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.docs import ASSETS_PATH
from app.api.problems import problem_response
from app.config import Settings
from app.services.keys import KeyRecord, KeyRing
from app.ui import UI_PATH

log = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset(
    {
        "/healthz",
        "/readyz",
        "/v2/health/live",
        "/v2/health/ready",
        "/docs",
        "/redoc",
        "/openapi.json",
    }
)
# Probes reach a container by its address, whatever the Host header; they reveal nothing.
_ANY_HOST_PATHS = frozenset({"/healthz", "/readyz", "/v2/health/live", "/v2/health/ready"})
_READ_METHODS = frozenset({"GET", "HEAD"})
KEY_ID = "graft.key_id"


def required_scope(method: str, path: str) -> str | None:
    """The scope a request needs; None for the public routes."""
    if (
        path in PUBLIC_PATHS
        or path.startswith(ASSETS_PATH + "/")
        or path == UI_PATH
        or path.startswith(UI_PATH + "/")
    ):
        return None
    if path == "/v1/keys" or path.startswith("/v1/keys/"):
        return "admin"
    if method == "POST" and (
        (path.startswith("/v1/models/") and path.endswith("/predict"))
        or (path.startswith("/v2/models/") and path.endswith("/infer"))
    ):
        return "predict"
    return "read" if method in _READ_METHODS else "train"


class _Bucket:
    __slots__ = ("tokens", "updated")

    def __init__(self, tokens: float) -> None:
        self.tokens = tokens
        self.updated = time.monotonic()


class AuthMiddleware:
    """401 without a valid key, 403 without the scope, 429 over the key's request rate.

    Sets `scope["graft.key_id"]` (None with GRAFT_AUTH=disabled) for the routes.
    """

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.enabled = settings.auth == "enabled"
        self.rate = settings.rate_limit_per_second
        self.burst = float(settings.rate_limit_burst)
        self.limit_admin = settings.rate_limit_admin
        self._buckets: dict[str, _Bucket] = {}
        self._keyring: KeyRing | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        needed = required_scope(scope["method"], scope["path"])
        scope[KEY_ID] = None
        if needed is None or not self.enabled:
            await self.app(scope, receive, send)
            return
        refusal = self._check(scope, needed)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, needed: str) -> Any:
        header = scope_header(scope, b"authorization")
        if header is None:
            return _refuse(
                scope,
                401,
                "missing_key",
                "this route needs an API key: send Authorization: Bearer <key> (the first "
                "admin key is GRAFT_ADMIN_KEY or the file <data dir>/admin-key)",
            )
        keyring = self._keyring
        if keyring is None:
            keyring = self._keyring = scope["app"].state.keyring
        key = keyring.lookup_header(header)
        if key is None:
            return _refuse(scope, 401, "invalid_key", "the API key is not known to this server")
        if key.revoked:
            return _refuse(scope, 401, "key_revoked", f"API key {key.id} has been revoked")
        if key.expires_ts <= time.time():
            assert key.expires_at is not None
            return _refuse(
                scope,
                401,
                "key_expired",
                f"API key {key.id} expired at {key.expires_at.isoformat()}",
            )
        if not key.allows(needed):
            return _refuse(
                scope,
                403,
                "insufficient_scope",
                f"{scope['method']} {scope['path']} needs the {needed!r} scope; API key "
                f"{key.id} has {sorted(key.scopes)}",
            )
        wait = self._spend(key)
        if wait > 0:
            return problem_response(
                429,
                "rate_limited",
                "Too many requests",
                f"API key {key.id} sent more than {self.rate:g} requests per second "
                f"(GRAFT_RATE_LIMIT_PER_SECOND, bursts of {self.burst:g}); retry in "
                f"{wait:.2f} s",
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        scope[KEY_ID] = key.id
        return None

    def _spend(self, key: KeyRecord) -> float:
        """0 when the request may go; else the seconds until one more token exists."""
        if self.rate <= 0 or ("admin" in key.scopes and not self.limit_admin):
            return 0.0
        bucket = self._buckets.get(key.id)
        if bucket is None:
            bucket = self._buckets[key.id] = _Bucket(self.burst)
        now = time.monotonic()
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate


def scope_header(scope: Scope, wanted: bytes) -> bytes | None:
    """The first value of header `wanted` (lower-case) of an ASGI scope, None if absent."""
    for name, value in scope["headers"]:
        if name == wanted:
            return bytes(value)
    return None


def _refuse(scope: Scope, status: int, code: str, detail: str) -> Any:
    title = "Unauthorized" if status == 401 else "Forbidden"
    headers = {"WWW-Authenticate": 'Bearer realm="graft"'} if status == 401 else None
    return problem_response(status, code, title, detail, headers=headers)


class HostCheckMiddleware:
    """400 for a Host header this server does not answer to (DNS rebinding)."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        hosts = settings.hosts_served
        self.any_host = "*" in hosts
        self.hosts = frozenset(h.lower().strip("[]") for h in hosts)
        # Raw Host header values already found allowed: the common case is one bytes lookup.
        self._seen: set[bytes] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any_host or scope["type"] != "http" or scope["path"] in _ANY_HOST_PATHS:
            await self.app(scope, receive, send)
            return
        raw = _raw_host(scope)
        if raw in self._seen:
            await self.app(scope, receive, send)
            return
        host = _host(raw)
        if host in self.hosts:
            if len(self._seen) < 64:  # only allowed values, so a handful at most
                self._seen.add(raw)
            await self.app(scope, receive, send)
            return
        response = problem_response(
            400,
            "host_not_allowed",
            "Bad request",
            f"this server does not answer to Host {host or '(none)'!r}; expected one of "
            f"{sorted(self.hosts)} (GRAFT_ALLOWED_HOSTS)",
        )
        await response(scope, receive, send)


def _raw_host(scope: Scope) -> bytes:
    return scope_header(scope, b"host") or b""


def _host(raw: bytes) -> str:
    host = raw.decode("latin-1").lower()
    if host.startswith("["):  # [::1]:8000
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
