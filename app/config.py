"""Typed settings read from GRAFT_* environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAFT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Folder for the SQLite file.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/graft.db."
    )
    workers: int = Field(1, ge=0, le=64, description="Worker processes the API starts itself.")
    api_processes: int | None = Field(
        None,
        ge=1,
        le=64,
        description="API processes `graft serve` runs on its port (default: the cores "
        "available to it, at most 8).",
    )
    worker_poll_seconds: float = Field(0.5, gt=0, description="Idle worker's queue poll period.")
    worker_torch_threads: int = Field(1, ge=1, description="torch threads per worker process.")
    heartbeat_seconds: float = Field(5.0, gt=0, description="How often a running job beats.")
    stale_after_seconds: float = Field(
        60.0, gt=0, description="A running job whose heartbeat is older than this is lost."
    )
    max_attempts: int = Field(2, ge=1, description="Runs a job gets before it fails worker_lost.")
    max_upload_bytes: int = Field(100 * 1024 * 1024, gt=0, description="Dataset upload limit.")
    max_request_bytes: int = Field(
        16 * 1024 * 1024, gt=0, description="Limit for every other request body."
    )
    # Bounds on what an upload decodes to, checked while it decodes (422 invalid_upload).
    max_dataset_rows: int = Field(
        10_000_000, ge=1, description="Most rows (or images) an uploaded dataset may hold."
    )
    max_dataset_columns: int = Field(
        10_000, ge=1, description="Most columns an uploaded table may have."
    )
    max_cell_bytes: int = Field(
        65_536, ge=1, description="Longest text cell (or column name) of an upload, in bytes."
    )
    max_decoded_bytes: int = Field(
        1024**3,
        ge=1,
        description="Memory an upload's decoded table or image arrays may take (bytes).",
    )
    model_cache_size: int = Field(16, ge=1, description="Loaded model versions kept in memory.")
    predict_fast_lane: bool = Field(
        True,
        description="Answer predict requests without FastAPI's routing (app/api/fast_lane.py); "
        "off, the route answers them, with the same results, a little slower.",
    )
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"
    opentelemetry: bool = Field(
        False,
        description="FastAPI's native OpenTelemetry spans, metrics and logs, sent through the "
        "providers the deployment configures (off: no per-request provider check).",
    )
    access_log: bool = Field(
        True,
        description="One JSON line per request on stdout (request id, route, status, latency, "
        "key id, model and version), written by a background thread.",
    )
    access_log_predict_sample: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of successful predict requests the access log writes (errors and "
        "other routes are always written).",
    )

    # Jobs that hold: time limits, live events, executors (issue 3).
    job_timeout_seconds: float = Field(
        86_400.0, gt=0, description="Default time limit of one run of a job (timeout_seconds)."
    )
    events_poll_seconds: float = Field(
        0.25, gt=0, description="How often the API looks for new events of a watched job."
    )
    events_keepalive_seconds: float = Field(
        15.0, gt=0, description="Idle time after which an event stream sends a comment."
    )
    executor: Literal["local", "celery"] = Field(
        "local", description="local: worker processes of the API or `graft worker`; celery."
    )
    broker_url: str | None = Field(
        None, description="Celery broker (redis://… or amqp://…) for GRAFT_EXECUTOR=celery."
    )
    celery_queue: str = Field("graft", description="Celery queue that job messages go to.")
    sweep_seconds: float = Field(
        5.0, gt=0, description="How often workers look for jobs whose worker was lost."
    )
    job_retention_days: float = Field(
        0.0,
        ge=0,
        description="Days a finished job (succeeded, failed, cancelled) is kept, with its "
        "events; 0 keeps jobs forever. Versions keep their job id and lineage either way.",
    )
    job_events_retention_days: float = Field(
        90.0,
        ge=0,
        description="Days a finished job keeps its metrics, log and warning events (its "
        "status events stay); 0 keeps them forever.",
    )

    @model_validator(mode="after")
    def _celery_needs_a_broker(self) -> "Settings":
        if self.executor == "celery" and not self.broker_url:
            raise ValueError(
                "GRAFT_EXECUTOR=celery needs GRAFT_BROKER_URL (redis://host:6379/0 or "
                "amqp://user:password@host:5672//)"
            )
        return self

    # Serving (issue 4): bounds of the loaded-model cache, micro-batching of forward passes.
    model_cache_bytes: int = Field(
        1024**3, ge=1, description="Memory the loaded versions may take together (bytes)."
    )
    batching: bool = Field(True, description="Group concurrent predictions into one pass.")
    batch_max_rows: int = Field(512, ge=1, description="Most rows in one grouped pass.")
    batch_max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="How long requests queued behind a running pass may be held to grow the "
        "next batch; a request that finds the model idle never waits.",
    )
    batch_inline_max_work: int = Field(
        500_000,
        ge=0,
        description="Passes whose rows x parameters stay under this run on the event loop; "
        "larger ones on a worker thread (0: always a thread).",
    )

    pin_malloc_thresholds: bool = Field(
        True,
        description="On Linux with glibc, fix malloc's mmap and trim thresholds in the API "
        "process so that large predictions reuse memory instead of faulting in new pages.",
    )

    # One client cannot stall everyone (issue 12): rows per prediction, open event streams.
    max_predict_rows: int = Field(
        100_000,
        ge=1,
        description="Most rows (instances, records or a tensor's batch dimension) in one "
        "prediction request, /v1 and /v2 (413 too_many_rows beyond).",
    )
    max_streams: int = Field(
        1000, ge=1, description="Open job event streams (SSE) per API process (429 beyond)."
    )
    max_streams_per_key: int = Field(
        10,
        ge=1,
        description="Open job event streams (SSE) per API key and process (429 beyond); not "
        "applied when auth is disabled (requests carry no key).",
    )

    # Safe on a network (issue 12): keys, hosts, origins, request rates, job quotas.
    auth: Literal["enabled", "disabled"] = Field(
        "enabled", description="disabled: no API keys are asked for (local experiments only)."
    )
    admin_key: SecretStr | None = Field(
        None,
        description="An admin API key to accept (and list as `key_env_admin`); without it the "
        "first start writes a generated one to <data dir>/admin-key.",
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="Signs webhooks (HMAC-SHA256, header Graft-Signature); a job may ask for "
        "a webhook_url only when it is set.",
    )
    webhook_allow_private: bool = Field(
        False,
        description="Let webhooks call loopback, private and link-local addresses (refused "
        "by default: a URL must not turn the server against its own network).",
    )
    webhook_timeout_seconds: float = Field(10.0, gt=0, description="One webhook attempt's timeout.")
    webhook_max_attempts: int = Field(
        8, ge=1, le=100, description="Attempts before a webhook is given up (failed)."
    )
    webhook_retry_seconds: float = Field(
        10.0,
        gt=0,
        description="The first retry's delay; each next one doubles (at most an hour), "
        "with jitter.",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="Host header values served (comma-separated; '*' for any); default: "
        "localhost, 127.0.0.1, ::1 and GRAFT_HOST. Others get 400.",
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description="Origins allowed to call the API from a browser (comma-separated); "
        "none by default, so CORS is off.",
    )
    # A guard against a runaway client, above what one process serves of small predictions
    # (about 2,000/s per core), so that an application's key is not throttled by default.
    rate_limit_per_second: float = Field(
        5000.0, ge=0, description="Requests per second per API key and process (0: no limit)."
    )
    rate_limit_burst: int = Field(
        10000, ge=1, description="Requests a key may send at once before the rate applies."
    )
    rate_limit_admin: bool = Field(False, description="Apply the rate limit to admin keys too.")
    max_active_jobs_per_key: int = Field(
        20, ge=1, description="Queued plus running jobs one API key may have."
    )
    max_queued_jobs: int = Field(
        1000, ge=1, description="Queued jobs the server accepts before answering 429."
    )

    # Training work bounded before it is queued (app/services/work_estimate.py).
    max_model_parameters: int = Field(
        50_000_000, ge=1, description="Most parameters of a model a job may train (422 beyond)."
    )
    max_activation_bytes: int = Field(
        2 * 1024**3,
        ge=1,
        description="Most estimated activation memory of one training batch, backward pass "
        "included (bytes).",
    )
    max_training_steps: int = Field(
        50_000_000,
        ge=1,
        description="Most optimizer steps of a job, cross-validation included (422 beyond).",
    )

    @field_validator("allowed_hosts", "cors_origins", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @property
    def hosts_served(self) -> list[str]:
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        return sorted({"localhost", "127.0.0.1", "::1", self.host})

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'graft.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
