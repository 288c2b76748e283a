"""The FastAPI application: create_app() wires settings, storage, workers and routes."""

import gc
import inspect
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from sqlalchemy.exc import DBAPIError

from app.access_log import AccessLog
from app.api import api_router
from app.api.auth import AuthMiddleware, HostCheckMiddleware
from app.api.docs import add_docs
from app.api.fast_lane import PredictFastLane
from app.api.limits import BodyLimitMiddleware
from app.api.openapi import complete_openapi
from app.api.problems import add_exception_handlers
from app.api.routes import health
from app.api.v2.errors import scope_exception_handlers
from app.api.v2.routes import router as v2_router
from app.config import Settings, get_settings
from app.db import changes
from app.db.session import Database
from app.jobs.worker import LocalWorkerPool, SupervisedWorkers
from app.observability import Metrics, RequestMetricsMiddleware
from app.observability import router as metrics_router
from app.services.job_streams import JobEventHub
from app.services.keys import KeyRing, ensure_admin_keys
from app.services.predictions import BatchingOptions, PredictionService
from app.serving.cache import ModelCache
from app.serving.memory import pin_malloc_thresholds
from app.serving.predictor import Predictor
from app.ui import add_ui

log = logging.getLogger(__name__)

DESCRIPTION = """
Graft trains a model on a large **source** dataset, then adapts it to a small **target**
dataset with a transfer strategy, keeps every model version, and serves predictions.

1. Add data: `POST /v1/datasets` (CSV, Parquet, JSON Lines) or `POST /v1/datasets/builtin`.
2. Train: `POST /v1/jobs/source-training`; watch `GET /v1/jobs/{id}` and its events.
3. Transfer: `POST /v1/jobs/fine-tuning` with strategy `parameter`, `feature` or `structure`.
4. Predict: `POST /v1/models/{name}/predict`.

Every route but liveness, readiness and these docs needs an API key:
`Authorization: Bearer <key>` (the **Authorize** button above). Scopes: `read` (GET routes),
`predict`, `train` (uploads, jobs, registry writes), `admin` (everything, including
`/v1/keys`). The first admin key is `GRAFT_ADMIN_KEY`, or the file `<data dir>/admin-key`.

Errors are RFC 9457 problem details (`application/problem+json`) with a stable `code`.
"""

TAGS = [
    {"name": "datasets", "description": "Upload or import tabular data; schemas are inferred."},
    {"name": "jobs", "description": "Source training and fine-tuning run as background jobs."},
    {"name": "models", "description": "The registry: versions, lineage, aliases, weights."},
    {"name": "predictions", "description": "Serve predictions from any version or alias."},
    {"name": "operations", "description": "Liveness, readiness and Prometheus metrics."},
    {"name": "keys", "description": "API keys and their scopes (admin)."},
    {
        "name": "inference protocol (v2)",
        "description": "The Open Inference Protocol (KServe, Triton): tensors in, tensors out.",
    },
]


def _freeze_startup_objects() -> None:
    """Keep what start-up allocated (torch, the app) out of the garbage collector's passes.

    Those objects live as long as the process, yet every full collection walks them; a
    large prediction allocates enough small objects to trigger one, which stalled requests
    for 100+ ms. Once per process: what later apps (tests) allocate stays collectable.
    """
    if gc.get_freeze_count() == 0:
        gc.collect()
        gc.freeze()


def _telemetry_options(settings: Settings) -> dict[str, Any]:
    """FastAPI's native OpenTelemetry, only when asked for (GRAFT_OPENTELEMETRY).

    When on, FastAPI asks on every request whether a tracer, meter or logger provider is
    configured: about 5 us a request, 4 % of a 1-row predict. Graft has its own metrics
    and access log, so it leaves that off unless the deployment sends OpenTelemetry.
    """
    if settings.opentelemetry or "telemetry" not in inspect.signature(FastAPI).parameters:
        return {}
    return {"telemetry": {"tracing": False, "metrics": False, "logs": False}}


def create_supervised_app() -> FastAPI:
    """One API process of `graft serve --processes N` (uvicorn calls this in each): settings
    from the environment, and the local workers are its parent's."""
    return create_app(get_settings(), runtime_dir=Path(os.environ[changes.RUNTIME_DIR_ENV]))


def create_app(settings: Settings | None = None, *, runtime_dir: Path | None = None) -> FastAPI:
    """The app. `runtime_dir`: this is one of several API processes, whose parent runs the
    local workers and shares that folder with them (see app/server.py)."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if settings.database_url is None:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        app.state.settings = settings
        app.state.database = Database(settings.resolved_database_url)
        if settings.auth == "enabled":
            try:
                ensure_admin_keys(app.state.database, settings)
            except DBAPIError:
                log.exception("could not set up the admin key; is the schema migrated?")
        else:
            log.warning(
                "GRAFT_AUTH=disabled: NO API KEYS ARE CHECKED. Anyone who can reach this "
                "port can upload data, train, move aliases, delete models and download "
                "weights. Use this only on a machine nobody else can reach."
            )
        app.state.keyring = KeyRing(app.state.database)
        app.state.model_cache = ModelCache[Predictor](
            settings.model_cache_size, settings.model_cache_bytes
        )
        app.state.predictions = PredictionService(
            app.state.database,
            app.state.model_cache,
            BatchingOptions(
                enabled=settings.batching,
                max_rows=settings.batch_max_rows,
                max_wait_ms=settings.batch_max_wait_ms,
                inline_max_work=settings.batch_inline_max_work,
            ),
            max_rows=settings.max_predict_rows,
        )
        app.state.predictions.on_pass = app.state.metrics.record_batch
        app.state.event_hub = JobEventHub(
            app.state.database,
            poll_seconds=settings.events_poll_seconds,
            keepalive_seconds=settings.events_keepalive_seconds,
            max_streams=settings.max_streams,
            max_streams_per_key=settings.max_streams_per_key,
        )
        app.state.worker_pool = None
        app.state.dispatcher = None
        if settings.executor == "celery":
            from app.jobs.celery_app import CeleryDispatcher

            app.state.dispatcher = CeleryDispatcher(settings)
        elif settings.workers > 0 and runtime_dir is not None:
            app.state.worker_pool = SupervisedWorkers(runtime_dir)
            app.state.dispatcher = app.state.worker_pool
        elif settings.workers > 0:
            app.state.worker_pool = LocalWorkerPool(settings)
            app.state.worker_pool.start()
            app.state.dispatcher = app.state.worker_pool
        # After the local workers start: training keeps glibc's defaults.
        if settings.pin_malloc_thresholds:
            pin_malloc_thresholds()
        _freeze_startup_objects()
        try:
            yield
        finally:
            if app.state.access_log is not None:
                app.state.access_log.close()
            app.state.metrics.close()
            await app.state.event_hub.close()
            if app.state.worker_pool is not None:
                app.state.worker_pool.stop()
            if settings.executor == "celery":
                app.state.dispatcher.close()
            app.state.predictions.close()
            app.state.keyring.close()
            app.state.database.dispose()

    app = FastAPI(
        **_telemetry_options(settings),
        title="Graft",
        version="0.1.0",
        summary="Transfer learning as a service: train, fine-tune, version, serve.",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Generated clients name their functions after operationIds: `create_dataset`, not
        # `create_dataset_v1_datasets_post`.
        generate_unique_id_function=lambda route: route.name,
    )
    # Added before the body limit, so the limit (and auth, and metrics) wrap it.
    if settings.predict_fast_lane:
        app.add_middleware(PredictFastLane)
    app.add_middleware(
        BodyLimitMiddleware,
        default_limit=settings.max_request_bytes,
        upload_limit=settings.max_upload_bytes,
    )
    # Outside the body limit: a request without a key is refused before its body is read.
    app.add_middleware(AuthMiddleware, settings=settings)
    if settings.cors_origins:
        # Outside auth, so that browsers' preflight requests (which carry no key) pass.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Last-Event-ID",
                "X-Request-ID",
            ],
            expose_headers=[
                "Location",
                "Retry-After",
                "Idempotent-Replayed",
                "ETag",
                "X-Request-ID",
            ],
        )
    app.add_middleware(HostCheckMiddleware, settings=settings)
    # Outermost, so that it also counts the 413s the body limit answers itself.
    app.state.metrics = Metrics(app.state)
    app.state.access_log = (
        AccessLog(predict_sample=settings.access_log_predict_sample)
        if settings.access_log
        else None
    )
    app.add_middleware(
        RequestMetricsMiddleware, metrics=app.state.metrics, access_log=app.state.access_log
    )
    add_exception_handlers(app)
    scope_exception_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics_router)
    app.include_router(api_router)
    app.include_router(v2_router)
    add_docs(app)
    add_ui(app)
    complete_openapi(app)
    return app
