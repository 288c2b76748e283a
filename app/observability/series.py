"""The series Graft exports and how they are kept: in plain dicts read at scrape time
(one process), or prometheus_client's multiprocess files (several API processes)."""

import os
from bisect import bisect_left
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector

from app.processes import is_running

# Seconds: from sub-millisecond predictions to slow uploads.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
)  # fmt: skip
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384, 65536)
REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CACHE_COUNTERS = ("hits", "misses", "loads", "evictions")
PREDICTIONS_HELP = "Prediction requests served, per model version."
ROWS_HELP = "Rows predicted, per model version."
DURATION_HELP = "Time to resolve, load if needed, and predict one request, per model version."
BATCH_ROWS_HELP = "Rows per forward pass, per model version."
BATCH_REQUESTS_HELP = "Requests grouped into one forward pass, per model version."
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
PUBLISH_SECONDS = 1.0


def shared_metrics_dir() -> Path | None:
    """Where this deployment's processes keep their metric values, when there are several
    (`graft serve --processes N` sets PROMETHEUS_MULTIPROC_DIR); None for one process."""
    folder = os.environ.get(MULTIPROCESS_ENV)
    return Path(folder) if folder else None


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
            row = self._predictions[(model, version)] = [0.0] * (len(LATENCY_BUCKETS) + 4)
        row[0] += 1
        row[1] += rows
        row[2 + bisect_left(LATENCY_BUCKETS, seconds)] += 1
        row[-1] += seconds

    def record_batch(self, model: str, version: int, rows: int, requests: int) -> None:
        row = self._passes.get((model, version))
        if row is None:
            width = len(ROW_BUCKETS) + len(REQUEST_BUCKETS) + 4
            row = self._passes[(model, version)] = [0.0] * width
        row[bisect_left(ROW_BUCKETS, rows)] += 1
        row[len(ROW_BUCKETS) + 1] += rows
        start = len(ROW_BUCKETS) + 2
        row[start + bisect_left(REQUEST_BUCKETS, requests)] += 1
        row[-1] += requests

    def collect(self) -> Iterator[Metric]:
        labels = ["model", "version"]
        count = CounterMetricFamily("graft_predictions", PREDICTIONS_HELP, labels=labels)
        rows = CounterMetricFamily("graft_prediction_rows", ROWS_HELP, labels=labels)
        duration = HistogramMetricFamily(
            "graft_prediction_duration_seconds", DURATION_HELP, labels=labels
        )
        for (model, version), row in list(self._predictions.items()):
            values, names = list(row), [model, str(version)]
            count.add_metric(names, values[0])
            rows.add_metric(names, values[1])
            _histogram(duration, names, LATENCY_BUCKETS, values[2:-1], values[-1])
        batch_rows = HistogramMetricFamily("graft_batch_rows", BATCH_ROWS_HELP, labels=labels)
        batch_requests = HistogramMetricFamily(
            "graft_batch_requests", BATCH_REQUESTS_HELP, labels=labels
        )
        split = len(ROW_BUCKETS) + 1
        for (model, version), row in list(self._passes.items()):
            values, names = list(row), [model, str(version)]
            _histogram(batch_rows, names, ROW_BUCKETS, values[:split], values[split])
            _histogram(batch_requests, names, REQUEST_BUCKETS, values[split + 1 : -1], values[-1])
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


def forget_dead_processes(folder: Path) -> None:
    """Drop the live gauges of processes that are gone (a restarted API process)."""
    for path in folder.glob("gauge_live*_*.db"):
        pid = path.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not is_running(int(pid)):
            mark_process_dead(int(pid), str(folder))
