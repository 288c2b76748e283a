"""Batch prediction and evaluation requests checked against the rows they name: the
versions pinned, their inputs and labels among the dataset's columns."""

from collections import Counter
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import (
    Dataset,
    ModelVersion,
)
from app.enums import JobKind, Task
from app.errors import Invalid
from app.schemas.jobs import (
    BatchPredictionCreate,
    EvaluationCreate,
)
from app.services import datasets as datasets_service
from app.services import image_jobs
from app.services import registry as registry_service
from app.services.job_drafts import NUMERIC_DTYPES, JobDraft, column_types, listed


def _table_dataset(dataset: Dataset, what: str) -> None:
    if image_jobs.dataset_image_shape(dataset) is not None:
        raise Invalid(
            "unsupported_dataset",
            f"{what} reads tables (CSV, Parquet, JSON Lines); dataset {dataset.id} holds images",
        )


def _check_inputs(dataset: Dataset, version: ModelVersion, columns: dict[str, str]) -> None:
    """The version's inputs are columns of the dataset, numbers where it reads numbers."""
    if image_jobs.model_image_shape(version) is not None:
        raise Invalid(
            "unsupported_model",
            f"{version.model_name} version {version.version} reads images; batch prediction "
            "and evaluation read tables",
        )
    expected = version.signature["inputs"]
    names = [column["name"] for column in expected]
    missing = [name for name in names if name not in columns]
    if missing:
        raise Invalid(
            "feature_mismatch",
            f"{version.model_name} version {version.version} reads {len(names)} features "
            f"{listed(names)}; dataset {dataset.id} lacks {listed(missing)}",
        )
    wrong_type = [
        f"{column['name']} (model: {column['dtype']}, dataset: {columns[column['name']]})"
        for column in expected
        if column["dtype"] in NUMERIC_DTYPES and columns[column["name"]] not in NUMERIC_DTYPES
    ]
    if wrong_type:
        raise Invalid(
            "feature_mismatch",
            f"{version.model_name} version {version.version} reads numbers where dataset "
            f"{dataset.id} holds text: {listed(wrong_type)}",
        )


# The result's own columns; an id column may not take one of these names.
PREDICTION_COLUMN = "prediction"
PROBABILITY_PREFIX = "probability_"


def draft_batch_prediction(session: Session, request: BatchPredictionCreate) -> JobDraft:
    """Pin the version, check the dataset holds its inputs and the id columns, and name
    the result dataset."""
    ref = request.model
    version = registry_service.resolve(session, ref.name, version=ref.version, alias=ref.alias)
    dataset = datasets_service.get_unchanging(session, request.dataset_id)
    _table_dataset(dataset, "batch prediction")
    columns = column_types(dataset)
    _check_inputs(dataset, version, columns)
    missing = [name for name in request.id_columns if name not in columns]
    if missing:
        raise Invalid(
            "column_not_found",
            f"id column(s) {listed(missing)} are not in dataset {dataset.id}; its columns are "
            f"{listed(list(columns))}",
        )
    duplicated = sorted(c for c, n in Counter(request.id_columns).items() if n > 1)
    if duplicated:
        raise Invalid("invalid_id_columns", f"id column(s) {listed(duplicated)} repeated")
    clashing = [
        name
        for name in request.id_columns
        if name == PREDICTION_COLUMN or name.startswith(PROBABILITY_PREFIX)
    ]
    if clashing:
        raise Invalid(
            "invalid_id_columns",
            f"id column(s) {listed(clashing)} would clash with the result's own columns "
            f"({PREDICTION_COLUMN!r}, {PROBABILITY_PREFIX}<class>); copy them under another "
            "name first",
        )
    body = request.model_dump(mode="json")
    if body["result_name"] is None:
        body["result_name"] = (
            f"{dataset.name} predictions ({version.model_name} v{version.version})"
        )[:200]
    return JobDraft(
        kind=JobKind.BATCH_PREDICTION,
        body=body,
        dataset_id=dataset.id,
        model_name=version.model_name,
        base_model_name=version.model_name,
        base_model_version=version.version,
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress={"rows_done": 0, "rows_total": dataset.rows},
    )


def draft_evaluation(session: Session, request: EvaluationCreate) -> JobDraft:
    """Pin every version (and with include_base their bases), check the dataset holds each
    one's inputs and a usable target column."""
    dataset = datasets_service.get_unchanging(session, request.dataset_id)
    _table_dataset(dataset, "evaluation")
    columns = column_types(dataset)
    versions: list[ModelVersion] = []
    for ref in request.models:
        versions.append(
            registry_service.resolve(session, ref.name, version=ref.version, alias=ref.alias)
        )
    if request.include_base:
        for version in list(versions):
            if version.parent_name is None or version.parent_version is None:
                continue
            base = session.scalar(
                select(ModelVersion).where(
                    ModelVersion.model_name == version.parent_name,
                    ModelVersion.version == version.parent_version,
                )
            )
            if base is not None:  # a deleted base is left out; the job's log says so
                versions.append(base)
    pinned: list[dict[str, Any]] = []
    seen: set[tuple[str, int]] = set()
    for version in versions:
        if (version.model_name, version.version) in seen:
            continue
        seen.add((version.model_name, version.version))
        _check_inputs(dataset, version, columns)
        target = request.target_column or version.signature.get("target")
        if not target or target not in columns:
            raise Invalid(
                "column_not_found",
                f"target column {target!r} of {version.model_name} version {version.version} "
                f"is not in dataset {dataset.id}; name the labels with target_column (its "
                f"columns are {listed(list(columns))})",
            )
        if version.task == Task.REGRESSION and columns[target] not in NUMERIC_DTYPES:
            raise Invalid(
                "target_mismatch",
                f"{version.model_name} version {version.version} does regression but column "
                f"{target!r} holds {columns[target]} values; expected numbers",
            )
        pinned.append({"name": version.model_name, "version": version.version, "target": target})
    body = {**request.model_dump(mode="json"), "pinned": pinned}
    first = pinned[0]
    return JobDraft(
        kind=JobKind.EVALUATION,
        body=body,
        dataset_id=dataset.id,
        model_name=first["name"],
        base_model_name=first["name"],
        base_model_version=first["version"],
        tags=request.tags,
        description=request.description,
        webhook_url=request.webhook_url,
        progress={"rows_done": 0, "rows_total": dataset.rows},
    )
