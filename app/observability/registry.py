"""The app's metrics registry: the series and collectors of app/observability, put
together per app (`app.state.metrics`)."""

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as _generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.datastructures import State

from app.observability.collectors import CachePublisher, JobsCollector, ModelCacheCollector
from app.observability.series import (
    BATCH_REQUESTS_HELP,
    BATCH_ROWS_HELP,
    DURATION_HELP,
    LATENCY_BUCKETS,
    PREDICTIONS_HELP,
    REQUEST_BUCKETS,
    ROW_BUCKETS,
    ROWS_HELP,
    PredictionSeries,
    RequestSeries,
    SharedRequestSeries,
    forget_dead_processes,
    shared_metrics_dir,
)


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
                LATENCY_BUCKETS
            )
            self._cache_publisher = CachePublisher(state)
        else:
            self.requests = RequestSeries(LATENCY_BUCKETS)
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
                "graft_predictions", PREDICTIONS_HELP, ["model", "version"], registry=None
            )
            self.prediction_rows = Counter(
                "graft_prediction_rows", ROWS_HELP, ["model", "version"], registry=None
            )
            self.prediction_duration = Histogram(
                "graft_prediction_duration_seconds",
                DURATION_HELP,
                ["model", "version"],
                buckets=LATENCY_BUCKETS,
                registry=None,
            )
            self.batch_rows = Histogram(
                "graft_batch_rows",
                BATCH_ROWS_HELP,
                ["model", "version"],
                buckets=ROW_BUCKETS,
                registry=None,
            )
            self.batch_requests = Histogram(
                "graft_batch_requests",
                BATCH_REQUESTS_HELP,
                ["model", "version"],
                buckets=REQUEST_BUCKETS,
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
