"""Typed settings read from GRAFT_* environment variables."""

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRAFT_", env_file=".env", extra="ignore")

    data_dir: Path = Field(Path("data"), description="Folder for the SQLite file.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/graft.db."
    )
    workers: int = Field(1, ge=0, le=64, description="Worker processes the API starts itself.")
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
    model_cache_size: int = Field(16, ge=1, description="Loaded model versions kept in memory.")
    host: str = "127.0.0.1"
    port: int = 8000
    log_level: str = "info"

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

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'graft.db').resolve()}"


@lru_cache
def get_settings() -> Settings:
    return Settings()
