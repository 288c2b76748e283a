"""Prometheus metrics: one registry per app, a cheap ASGI middleware, scrape-time collectors.

Series (all prefixed `graft_`):
- http_requests_total{method, route, status} and http_request_duration_seconds{method, route}:
  `route` is the matched route's template (`/v1/models/{name}/predict`), never the raw path,
  so the label set stays bounded; requests that match no route count as `<unmatched>`.
- predictions_total, prediction_rows_total, prediction_duration_seconds {model, version}.
- batch_rows and batch_requests {model, version}: rows and requests per forward pass
  (`record_batch`, which the PredictionService calls after every forward pass).
- model_cache_{hits,misses,loads,evictions}_total, model_cache_entries, model_cache_bytes:
  read from the app's model cache at scrape time.
- jobs{status, kind}: jobs in the database per status, counted at scrape time.
"""

import logging
import os
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import State
from starlette.responses import Response
from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.access_log import AccessLog, request_id
from app.api.auth import KEY_ID, scope_header
from app.db.models import Job
from app.enums import JobKind, JobStatus
from app.processes import is_running

log = logging.getLogger(__name__)

UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Seconds: from sub-millisecond predictions to slow uploads.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
_REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_CACHE_COUNTERS = ("hits", "misses", "loads", "evictions")
_PREDICTIONS_HELP = "Prediction requests served, per model version."
_ROWS_HELP = "Rows predicted, per model version."
_DURATION_HELP = "Time to resolve, load if needed, and predict one request, per model version."
_BATCH_ROWS_HELP = "Rows per forward pass, per model version."
_BATCH_REQUESTS_HELP = "Requests grouped into one forward pass, per model version."
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_SECONDS = 1.0
# Distinct (route, prefix) pairs remembered; raw prefixes beyond it are worked out each time.
_MAX_CACHED_TEMPLATES = 4096


def shared_metrics_dir() -> Path | None:
    """Where this deployment's processes keep their metric values, when there are several
    (`graft serve --processes N` sets PROMETHEUS_MULTIPROC_DIR); None for one process."""
    folder = os.environ.get(MULTIPROCESS_ENV)
    return Path(folder) if folder else None


class Metrics:
    """The app's metrics; `app.state.metrics` holds one, `record_batch` is for the batcher.

    One process keeps its request series in plain dicts, read at scrape time. Several (one
    `graft serve --processes N`) keep every value in prometheus_client's multiprocess mode
    (a memory-mapped file per process), so that whichever process answers `/metrics` sums
    them all.
    """

    def __init__(self, state: State) -> None:
        self.registry = CollectorRegistry()
        registry = self.registry
        shared = shared_metrics_dir()
        self._cache_publisher: CachePublisher | None = None
        if shared is not None:
            forget_dead_processes(shared)
            MultiProcessCollector(registry, path=str(shared))
            self.requests: RequestSeries | SharedRequestSeries = SharedRequestSeries(
                _LATENCY_BUCKETS
            )
            self._cache_publisher = CachePublisher(state)
        else:
            self.requests = RequestSeries(_LATENCY_BUCKETS)
            registry.register(self.requests)
            registry.register(ModelCacheCollector(state))
        # One process: prediction and batch series in plain lists too (PredictionSeries);
        # several: prometheus_client's multiprocess counters and histograms.
        self.prediction_series: PredictionSeries | None = None
        if shared is None:
            self.prediction_series = PredictionSeries()
            registry.register(self.prediction_series)
        else:
            self.predictions = Counter(
                "graft_predictions", _PREDICTIONS_HELP, ["model", "version"], registry=None
            )
            self.prediction_rows = Counter(
                "graft_prediction_rows", _ROWS_HELP, ["model", "version"], registry=None
            )
            self.prediction_duration = Histogram(
                "graft_prediction_duration_seconds",
                _DURATION_HELP,
                ["model", "version"],
                buckets=_LATENCY_BUCKETS,
                registry=None,
            )
            self.batch_rows = Histogram(
                "graft_batch_rows",
                _BATCH_ROWS_HELP,
                ["model", "version"],
                buckets=_ROW_BUCKETS,
                registry=None,
            )
            self.batch_requests = Histogram(
                "graft_batch_requests",
                _BATCH_REQUESTS_HELP,
                ["model", "version"],
                buckets=_REQUEST_BUCKETS,
                registry=None,
            )
        registry.register(JobsCollector(state))
        # `labels()` takes a lock and builds a tuple on every call; children are kept instead.
        self._prediction_children: dict[tuple[str, int], tuple[Any, Any, Any]] = {}
        self._batch_children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.observe(method, route, status, seconds)

    def observe_prediction(self, model: str, version: int, rows: int, seconds: float) -> None:
        """One prediction request of `rows` rows served by `model` version `version`."""
        if self.prediction_series is not None:
            self.prediction_series.observe_prediction(model, version, rows, seconds)
            return
        children = self._prediction_children.get((model, version))
        if children is None:
            labels = (model, str(version))
            children = (
                self.predictions.labels(*labels),
                self.prediction_rows.labels(*labels),
                self.prediction_duration.labels(*labels),
            )
            self._prediction_children[(model, version)] = children
        count, total_rows, duration = children
        count.inc()
        total_rows.inc(rows)
        duration.observe(seconds)

    def record_batch(self, model_name: str, version: int, rows: int, requests: int) -> None:
        """One forward pass over `rows` rows gathered from `requests` requests."""
        if self.prediction_series is not None:
            self.prediction_series.record_batch(model_name, version, rows, requests)
            return
        children = self._batch_children.get((model_name, version))
        if children is None:
            labels = (model_name, str(version))
            children = (self.batch_rows.labels(*labels), self.batch_requests.labels(*labels))
            self._batch_children[(model_name, version)] = children
        children[0].observe(rows)
        children[1].observe(requests)

    def exposition(self) -> bytes:
        if self._cache_publisher is not None:
            self._cache_publisher.publish()
        return _generate_latest(self.registry)

    def close(self) -> None:
        if self._cache_publisher is not None:
            self._cache_publisher.close()


class RequestSeries(Collector):
    """HTTP request counts and latency histograms, kept in plain dicts and lists.

    The middleware calls `observe` for every request, so it does without prometheus_client's
    per-value locks: it runs on the event loop's one thread, the only writer. A scrape (from
    another thread) copies each dict in one step under the GIL and may see a request's count
    a moment before its latency, never a torn value.
    """

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        self._counts: dict[tuple[str, str, int], int] = {}
        # Per (method, route): one count per bucket, then +Inf, then the sum of seconds.
        self._latency: dict[tuple[str, str], list[float]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        row = self._latency.get((method, route))
        if row is None:
            row = self._latency[(method, route)] = [0.0] * (len(self._bounds) + 2)
        row[bisect_left(self._bounds, seconds)] += 1
        row[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        counts = CounterMetricFamily(
            "graft_http_requests",
            "HTTP requests answered, by method, route template and status.",
            labels=["method", "route", "status"],
        )
        for (method, route, status), count in list(self._counts.items()):
            counts.add_metric([method, route, str(status)], count)
        yield counts
        latency = HistogramMetricFamily(
            "graft_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route template.",
            labels=["method", "route"],
        )
        bounds = [*(str(float(bound)) for bound in self._bounds), "+Inf"]
        for (method, route), row in list(self._latency.items()):
            values = list(row)
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip(bounds, values[:-1], strict=True):
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            latency.add_metric([method, route], buckets, sum_value=values[-1])
        yield latency


def _histogram(
    family: HistogramMetricFamily,
    labels: list[str],
    bounds: tuple[float, ...],
    counts: list[float],
    total: float,
) -> None:
    """Add one label set's histogram from per-bucket counts (the last one +Inf)."""
    cumulative, buckets = 0.0, []
    for bound, in_bucket in zip([*map(str, map(float, bounds)), "+Inf"], counts, strict=True):
        cumulative += in_bucket
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, sum_value=total)


class PredictionSeries(Collector):
    """Prediction and forward-pass series of one process, in plain lists per model version.

    Like RequestSeries, and for the same reason: both writers (the predict routes and the
    batcher's pass listener) run on the event loop, so a request costs a dict lookup and a
    few list increments instead of eight locked prometheus_client updates.
    """

    def __init__(self) -> None:
        # Per (model, version): count, rows, then latency buckets (+Inf last), then the sum.
        self._predictions: dict[tuple[str, int], list[float]] = {}
        # Per (model, version): rows buckets (+Inf last), rows sum, requests buckets, sum.
        self._passes: dict[tuple[str, int], list[float]] = {}

    def observe_prediction(self, model: str, version: int, rows: int, seconds: float) -> None:
        row = self._predictions.get((model, version))
        if row is None:
            row = self._predictions[(model, version)] = [0.0] * (len(_LATENCY_BUCKETS) + 4)
        row[0] += 1
        row[1] += rows
        row[2 + bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def record_batch(self, model: str, version: int, rows: int, requests: int) -> None:
        row = self._passes.get((model, version))
        if row is None:
            width = len(_ROW_BUCKETS) + len(_REQUEST_BUCKETS) + 4
            row = self._passes[(model, version)] = [0.0] * width
        row[bisect_left(_ROW_BUCKETS, rows)] += 1
        row[len(_ROW_BUCKETS) + 1] += rows
        start = len(_ROW_BUCKETS) + 2
        row[start + bisect_left(_REQUEST_BUCKETS, requests)] += 1
        row[-1] += requests

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        count = CounterMetricFamily("graft_predictions", _PREDICTIONS_HELP, labels=labels)
        rows = CounterMetricFamily("graft_prediction_rows", _ROWS_HELP, labels=labels)
        duration = HistogramMetricFamily(
            "graft_prediction_duration_seconds", _DURATION_HELP, labels=labels
        )
        for (model, version), row in list(self._predictions.items()):
            values, names = list(row), [model, str(version)]
            count.add_metric(names, values[0])
            rows.add_metric(names, values[1])
            _histogram(duration, names, _LATENCY_BUCKETS, values[2:-1], values[-1])
        batch_rows = HistogramMetricFamily("graft_batch_rows", _BATCH_ROWS_HELP, labels=labels)
        batch_requests = HistogramMetricFamily(
            "graft_batch_requests", _BATCH_REQUESTS_HELP, labels=labels
        )
        split = len(_ROW_BUCKETS) + 1
        for (model, version), row in list(self._passes.items()):
            values, names = list(row), [model, str(version)]
            _histogram(batch_rows, names, _ROW_BUCKETS, values[:split], values[split])
            _histogram(batch_requests, names, _REQUEST_BUCKETS, values[split + 1 : -1], values[-1])
        yield from (count, rows, duration, batch_rows, batch_requests)


class SharedRequestSeries:
    """The request series in multiprocess mode: prometheus_client counters and histograms
    whose values live in this process's memory-mapped file, with each label set's child
    kept so a request costs two dict lookups and three writes to the map."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._count = Counter(
            "graft_http_requests",
            "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"],
            registry=None,
        )
        self._latency = Histogram(
            "graft_http_request_duration_seconds",
            "Time from receiving a request to the end of its response, by route template.",
            ["method", "route"],
            buckets=buckets,
            registry=None,
        )
        self._count_children: dict[tuple[str, str, int], Any] = {}
        self._latency_children: dict[tuple[str, str], Any] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        count = self._count_children.get(key)
        if count is None:
            count = self._count_children[key] = self._count.labels(method, route, str(status))
        count.inc()
        latency = self._latency_children.get((method, route))
        if latency is None:
            latency = self._latency_children[(method, route)] = self._latency.labels(method, route)
        latency.observe(seconds)


class CachePublisher:
    """Copies this process's model cache counters into multiprocess series every
    PUBLISH_SECONDS (and at each scrape this process answers), so that `/metrics` sums the
    caches of every process: counters by what they gained since the last copy, entries and
    bytes as this process's live value."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._counters = {
            name: Counter(f"graft_model_cache_{name}", f"Model cache {name}.", registry=None)
            for name in _CACHE_COUNTERS
        }
        self._entries = Gauge(
            "graft_model_cache_entries",
            "Model versions loaded.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self._bytes = Gauge(
            "graft_model_cache_bytes",
            "Memory held by the loaded model versions.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self._published: dict[str, float] = dict.fromkeys(_CACHE_COUNTERS, 0.0)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cache-metrics", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        cache = getattr(self._state, "model_cache", None)
        if cache is None:  # before start-up
            return
        stats = cache.stats()
        with self._lock:
            for name, counter in self._counters.items():
                gained = float(stats[name]) - self._published[name]
                if gained > 0:
                    counter.inc(gained)
                    self._published[name] += gained
            self._entries.set(stats["entries"])
            self._bytes.set(stats["bytes"])

    def close(self) -> None:
        self._closing.set()

    def _run(self) -> None:
        while not self._closing.wait(PUBLISH_SECONDS):
            try:
                self.publish()
            except Exception:  # metrics must never take the process down
                log.warning("metrics: could not publish the model cache's", exc_info=True)


def forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of processes that are gone (a restarted API process)."""
    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not is_running(int(pid)):
            mark_process_dead(int(pid), str(folder))


class ModelCacheCollector(Collector):
    """The model cache's counters, read when Prometheus scrapes.

    Works with a cache that offers `stats()` (a dict of the counters, entries and bytes) and
    with one that only has the counters as attributes.
    """

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        cache = getattr(self._state, "model_cache", None)
        if cache is None:  # before start-up
            return
        stats_method = getattr(cache, "stats", None)
        stats: dict[str, Any] = dict(stats_method()) if callable(stats_method) else {}
        for name in _CACHE_COUNTERS:
            value = stats.get(name, getattr(cache, name, None))
            if value is not None:
                yield CounterMetricFamily(
                    f"graft_model_cache_{name}", f"Model cache {name}.", value=float(value)
                )
        entries = stats.get("entries")
        if entries is None and hasattr(cache, "__len__"):
            entries = len(cache)
        if entries is not None:
            yield GaugeMetricFamily(
                "graft_model_cache_entries", "Model versions loaded.", value=float(entries)
            )
        if stats.get("bytes") is not None:
            yield GaugeMetricFamily(
                "graft_model_cache_bytes",
                "Memory held by the loaded model versions.",
                value=float(stats["bytes"]),
            )


class JobsCollector(Collector):
    """Jobs per status and kind, counted with one read-only query when Prometheus scrapes."""

    def __init__(self, state: State) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        database = getattr(self._state, "database", None)
        if database is None:
            return
        try:
            with database.read_scope() as session:
                rows = session.execute(
                    select(Job.status, Job.kind, func.count()).group_by(Job.status, Job.kind)
                ).all()
        except SQLAlchemyError:
            log.warning("metrics: could not count jobs", exc_info=True)
            return
        counts = {(status, kind): count for status, kind, count in rows}
        family = GaugeMetricFamily(
            "graft_jobs", "Jobs by status and kind.", labels=["status", "kind"]
        )
        # Every status and kind is present, at 0 when there are none, so rates and alerts
        # never see a series disappear.
        for status in JobStatus:
            for kind in JobKind:
                family.add_metric(
                    [status.value, kind.value], counts.get((status.value, kind.value), 0)
                )
        yield family


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


router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Text exposition."}},
)
def metrics(request: Request) -> Response:
    """Request, prediction, batching, model cache and job series in Prometheus' text format."""
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
