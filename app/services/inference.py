"""Predictions for protocols other than /v1: a resolved version and rows in signature order.

This is the one seam between the Open Inference Protocol and the prediction path. It goes
through the /v1 prediction service today, so both protocols validate and predict the same way;
when the serving fast path lands, re-point `predict_rows` at it and nothing else changes.
"""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.schemas.predictions import PredictRequest
from app.services import predictions as predictions_service
from app.services import registry as registry_service
from app.serving.cache import ModelCache


def resolve(session: Session, name: str, version: int | None) -> ModelVersion:
    """The version asked for, else the one /v1 would use: alias `production`, else the latest."""
    if version is None:
        return registry_service.resolve(session, name)
    return registry_service.get_version(session, name, version)


def version_numbers(session: Session, name: str) -> list[int]:
    registry_service.get_model(session, name)
    query = (
        select(ModelVersion.version)
        .where(ModelVersion.model_name == name)
        .order_by(ModelVersion.version)
    )
    return list(session.scalars(query))


def predict_rows(
    session: Session, cache: ModelCache, version: ModelVersion, rows: list[list[Any]]
) -> dict[str, Any]:
    """`predictions` for each row, plus `classes` and `probabilities` for a classifier.

    Raises app.errors.Invalid when a value does not fit the signature.
    """
    # The rows were checked against the signature by the caller's codec; constructing the
    # request skips a second pydantic pass over every value.
    request = PredictRequest.model_construct(instances=rows, records=None)
    return predictions_service.predict(
        session, cache, version.model_name, request, version=version.version
    )
