"""Training job requests checked against the rows they name: the dataset's columns and
types, the base version's signature, the joint source, the work estimate. Drafting only
reads; `jobs.queue` writes a draft."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import (
    Dataset,
    ModelVersion,
)
from app.enums import JobKind, Task
from app.errors import Conflict, Invalid
from app.ml.transfer import registry as strategies
from app.schemas.jobs import (
    FineTuningCreate,
    SourceTrainingCreate,
)
from app.services import datasets as datasets_service
from app.services import image_jobs, work_estimate
from app.services import registry as registry_service

NUMERIC_DTYPES = {"int64", "float64", "bool"}
# Cross-validation (strategy auto, target_normalization auto) needs two folds of two rows.
MIN_CV_ROWS = 4
_FEATURE_DTYPES = NUMERIC_DTYPES | {"string", "category"}


def column_types(dataset: Dataset) -> dict[str, str]:
    return {column["name"]: column["dtype"] for column in dataset.columns}


def listed(names: list[str], limit: int = 20) -> str:
    """A list for a detail message, cut short: a request may name thousands of columns."""
    shown = repr(names[:limit])
    return shown if len(names) <= limit else f"{shown[:-1]}, ... ({len(names):,} in all)]"


def _require_target(dataset: Dataset, target: str, columns: dict[str, str]) -> None:
    if target not in columns:
        raise Invalid(
            "column_not_found",
            f"target column {target!r} is not in dataset {dataset.id}; "
            f"its columns are {listed(list(columns))}",
        )


def check_source_request(dataset: Dataset, request: SourceTrainingCreate) -> None:
    columns = column_types(dataset)
    _require_target(dataset, request.target_column, columns)
    features = request.feature_columns or [c for c in columns if c != request.target_column]
    missing = [c for c in features if c not in columns]
    if missing:
        raise Invalid(
            "column_not_found",
            f"feature column(s) {listed(missing)} are not in dataset {dataset.id}; "
            f"its columns are {listed(list(columns))}",
        )
    if request.target_column in features:
        raise Invalid(
            "invalid_feature_columns",
            f"the target column {request.target_column!r} cannot also be a feature",
        )
    duplicated = sorted(c for c, n in Counter(features).items() if n > 1)
    if duplicated:
        raise Invalid("invalid_feature_columns", f"feature column(s) {listed(duplicated)} repeated")
    if not features:
        raise Invalid("invalid_feature_columns", "the dataset has no column besides the target")
    unusable = [f"{c} ({columns[c]})" for c in features if columns[c] not in _FEATURE_DTYPES]
    if unusable:
        raise Invalid(
            "unsupported_dtype",
            f"feature column(s) {unusable} have a type Graft cannot use; expected numbers, "
            "booleans or categories (strings)",
        )
    target_dtype = columns[request.target_column]
    if request.task == Task.REGRESSION and target_dtype not in NUMERIC_DTYPES:
        raise Invalid(
            "invalid_target",
            f"task is regression but target column {request.target_column!r} holds "
            f"{target_dtype} values; expected numbers",
        )
    if dataset.rows < 2:
        raise Invalid("dataset_too_small", f"dataset {dataset.id} has {dataset.rows} row(s)")


def _check_fine_tuning_request(
    dataset: Dataset, request: FineTuningCreate, base: ModelVersion
) -> None:
    columns = column_types(dataset)
    _require_target(dataset, request.target_column, columns)
    expected = base.signature["inputs"]
    names = [column["name"] for column in expected]
    missing = [name for name in names if name not in columns]
    if missing:
        raise Invalid(
            "feature_mismatch",
            f"{base.model_name} version {base.version} expects {len(names)} features "
            f"{listed(names)}; dataset {dataset.id} lacks {listed(missing)}",
        )
    wrong_type = [
        f"{column['name']} (model: {column['dtype']}, dataset: {columns[column['name']]})"
        for column in expected
        if (column["dtype"] in NUMERIC_DTYPES) != (columns[column["name"]] in NUMERIC_DTYPES)
    ]
    if wrong_type:
        raise Invalid(
            "feature_mismatch",
            f"feature types differ from {base.model_name} version {base.version}: "
            f"{listed(wrong_type)}",
        )
    if request.target_column in names:
        raise Invalid(
            "invalid_target",
            f"{request.target_column!r} is an input of the base model, so it cannot be the target",
        )
    if base.task == Task.REGRESSION and columns[request.target_column] not in NUMERIC_DTYPES:
        raise Invalid(
            "target_mismatch",
            f"the base model does regression but target column {request.target_column!r} "
            f"holds {columns[request.target_column]} values; expected numbers",
        )


def _check_joint_source(session: Session, base: ModelVersion) -> Dataset:
    """`joint` trains on the base's own training rows: they must still be there and usable
    (and `queue` holds the row until the job is committed)."""
    source = session.scalar(select(Dataset).where(Dataset.id == base.dataset_id))
    if source is None:
        raise Conflict(
            "source_dataset_unavailable",
            f"strategy joint trains on the rows {base.model_name} version {base.version} was "
            f"trained on, dataset {base.dataset_id}, which no longer exists; choose another "
            "strategy",
        )
    columns = column_types(source)
    needed = [column["name"] for column in base.signature["inputs"]] + [base.signature["target"]]
    missing = [name for name in needed if name not in columns]
    if missing:
        raise Invalid(
            "source_dataset_mismatch",
            f"strategy joint needs columns {listed(needed)} in the source dataset {source.id}; "
            f"it lacks {listed(missing)}",
        )
    return source


@dataclass(frozen=True)
class JobDraft:
    """A job request checked against the rows it names, not yet written.

    Drafting only reads, so the API does it before its write transaction begins (on SQLite
    the write lock is then held for the few statements of `queue` alone); `queue` checks
    again, under share locks, that the rows it relies on are still there.
    """

    kind: JobKind
    body: dict[str, Any]
    dataset_id: str
    model_name: str
    base_model_name: str | None = None
    base_model_version: int | None = None
    # The base's training dataset, which a `joint` fine-tune reads too.
    source_dataset_id: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    description: str | None = None
    webhook_url: str | None = None
    # What GET /v1/jobs/{id} shows while the job waits.
    progress: dict[str, Any] = field(default_factory=dict)


def _epochs(request: SourceTrainingCreate | FineTuningCreate) -> dict[str, Any]:
    return {"epoch": 0, "epochs": request.hyperparameters.epochs}


def draft_source_training(
    session: Session, request: SourceTrainingCreate, limits: work_estimate.Limits | None = None
) -> JobDraft:
    """Validate what can be checked now: columns, dtypes, architecture, the work limits."""
    dataset = datasets_service.get_unchanging(session, request.dataset_id)
    request = image_jobs.check_source_request(dataset, request)
    if image_jobs.dataset_image_shape(dataset) is None:
        check_source_request(dataset, request)
    estimate = work_estimate.source_training(request, dataset.columns, dataset.rows)
    work_estimate.check(estimate, limits or work_estimate.Limits())
    return JobDraft(
        kind=JobKind.SOURCE_TRAINING,
        body=request.model_dump(mode="json"),
        dataset_id=dataset.id,
        model_name=request.model_name,
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress=_epochs(request),
    )


def draft_fine_tuning(
    session: Session, request: FineTuningCreate, limits: work_estimate.Limits | None = None
) -> JobDraft:
    """Resolve and pin the base version (an alias is read now), validate the target data."""
    ref = request.base_model
    base = registry_service.resolve(session, ref.name, version=ref.version, alias=ref.alias)
    parent = (
        f"; its parent {base.parent_name} version {base.parent_version} is one network"
        if base.parent_name
        else ""
    )
    if base.architecture.get("type") == "ensemble":
        blended = ", ".join(base.architecture.get("candidates") or []) or "several models"
        raise Invalid(
            "base_is_ensemble",
            f"version {base.version} of model {base.model_name!r} is a blend that auto chose "
            f"({blended}), served as one model; fine-tuning starts from one network's "
            f"weights, so name a version that is not a blend as base_model{parent}",
        )
    if base.architecture.get("type") == "forest":
        raise Invalid(
            "base_is_forest",
            f"version {base.version} of model {base.model_name!r} is a random forest "
            "(strategy forest): trees have no weights to fine-tune, so name a version that "
            f"is a network as base_model{parent}",
        )
    dataset = datasets_service.get_unchanging(session, request.dataset_id)
    if image_jobs.dataset_image_shape(dataset) or image_jobs.model_image_shape(base):
        image_jobs.check_fine_tuning_request(dataset, request, base)
    else:
        _check_fine_tuning_request(dataset, request, base)
    source_rows = None
    needs_source = strategies.needs_source_rows(request.strategy)
    if needs_source:
        source_rows = _check_joint_source(session, base).rows
    elif request.strategy == strategies.AUTO:  # auto adds joint while the source rows exist
        source_rows = session.scalar(select(Dataset.rows).where(Dataset.id == base.dataset_id))
    chooses = request.strategy == strategies.AUTO or request.target_normalization == "auto"
    if chooses and dataset.rows < MIN_CV_ROWS:
        raise Invalid(
            "dataset_too_small",
            f"strategy auto and target_normalization auto choose by cross-validation, which "
            f"needs at least {MIN_CV_ROWS} target rows; dataset {dataset.id} has {dataset.rows}",
        )
    estimate = work_estimate.fine_tuning(
        request, base.architecture, base.task, dataset.rows, source_rows
    )
    work_estimate.check(estimate, limits or work_estimate.Limits())
    return JobDraft(
        kind=JobKind.FINE_TUNING,
        body=request.model_dump(mode="json"),
        dataset_id=dataset.id,
        model_name=request.model_name,
        base_model_name=base.model_name,
        base_model_version=base.version,
        source_dataset_id=base.dataset_id if needs_source else None,
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress=_epochs(request),
    )
