"""String enums shared by the database, the API and the workers."""

from enum import StrEnum


class JobKind(StrEnum):
    SOURCE_TRAINING = "source_training"
    FINE_TUNING = "fine_tuning"
    BATCH_PREDICTION = "batch_prediction"
    EVALUATION = "evaluation"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


ACTIVE_JOB_STATUSES = (JobStatus.QUEUED, JobStatus.RUNNING)


class Task(StrEnum):
    CLASSIFICATION = "classification"
    REGRESSION = "regression"


class TargetNormalization(StrEnum):
    SOURCE = "source"
    TARGET = "target"
    AUTO = "auto"


class VersionKind(StrEnum):
    SOURCE = "source"
    FINE_TUNED = "fine_tuned"


class EventType(StrEnum):
    STATUS = "status"
    METRICS = "metrics"
    LOG = "log"
    WARNING = "warning"


class DatasetFormat(StrEnum):
    CSV = "csv"
    PARQUET = "parquet"
    JSONL = "jsonl"
    NPZ = "npz"
