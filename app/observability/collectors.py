"""Scrape-time collectors: the model cache (read in this process, or published by every
API process for the one that answers) and the jobs in the database per status and kind."""

import logging
import threading
from collections.abc import Iterator
from typing import Any

from prometheus_client import Counter, Gauge
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.datastructures import State

from app.db.models import Job
from app.enums import JobKind, JobStatus
from app.observability.series import CACHE_COUNTERS, PUBLISH_SECONDS

log = logging.getLogger(__name__)


class CachePublisher:
    """Copies this process's model cache counters into multiprocess series every
    PUBLISH_SECONDS (and at each scrape this process answers), so that `/metrics` sums the
    caches of every process: counters by what they gained since the last copy, entries and
    bytes as this process's live value."""

    def __init__(self, state: State) -> None:
        self._state = state
        self._counters = {
            name: Counter(f"graft_model_cache_{name}", f"Model cache {name}.", registry=None)
            for name in CACHE_COUNTERS
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
        self._published: dict[str, float] = dict.fromkeys(CACHE_COUNTERS, 0.0)
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
        for name in CACHE_COUNTERS:
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
