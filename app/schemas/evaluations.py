from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.enums import Task, VersionKind
from app.schemas.common import Schema
from app.schemas.models import ModelRef


class EvaluatedDataset(Schema):
    id: str
    name: str
    sha256: str = Field(description="sha256 of the dataset's bytes when it was scored.")


class EvaluationRead(Schema):
    id: str
    name: str
    version: int
    job_id: str | None
    dataset: EvaluatedDataset
    target_column: str
    task: Task
    metrics: dict[str, Any] = Field(
        description="Classification: accuracy, f1_macro, f1_weighted, log_loss, brier, "
        "calibration (expected_calibration_error and reliability bins), confusion_matrix, "
        "per_class, unknown_label_rows. Regression: r2, rmse, mae, mean_error. Both: rows "
        "scored and unlabelled_rows (skipped)."
    )
    created_at: datetime
    created_by: str | None


class ComparedVersion(Schema):
    name: str
    version: int
    role: Literal["requested", "base"] = Field(
        description="`base`: added as the base of a requested fine-tuned version."
    )
    kind: VersionKind
    strategy: str | None
    parent: ModelRef | None
    created_at: datetime
    task: Task
    validation: dict[str, Any] | None = Field(
        description="The metrics on its training job's validation rows."
    )
    transfer: dict[str, Any] | None = Field(
        description="Fine-tuned versions: the cross-validated score, the target-only "
        "baseline and transfer_gain from the transfer report."
    )


class ComparedScore(Schema):
    name: str
    version: int
    evaluation_id: str
    created_at: datetime
    metrics: dict[str, Any] = Field(description="The headline metrics of that evaluation.")


class ComparedDataset(Schema):
    dataset: EvaluatedDataset
    target_column: str
    scores: list[ComparedScore] = Field(
        description="Each version's latest evaluation on this dataset, in the versions' order."
    )
    best: ModelRef | None = Field(
        description="The version with the best headline metric (accuracy, or R² for "
        "regression) among those scored here."
    )


class CompareRead(Schema):
    name: str
    headline_metrics: list[str]
    versions: list[ComparedVersion]
    datasets: list[ComparedDataset] = Field(
        description="Every dataset any compared version was evaluated on, newest first, "
        "with the versions' scores side by side."
    )
