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

from app.observability.middleware import UNMATCHED_ROUTE, RequestMetricsMiddleware
from app.observability.registry import Metrics
from app.observability.routes import router

__all__ = ["UNMATCHED_ROUTE", "Metrics", "RequestMetricsMiddleware", "router"]
