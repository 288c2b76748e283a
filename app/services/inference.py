"""Predictions for protocols other than /v1: a resolved version and rows in signature order.

This is the one seam between the Open Inference Protocol and the prediction path: it goes
through the same PredictionService as /v1 (cache, checks, micro-batching), so both protocols
validate and predict the same way.
"""

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.services import registry as registry_service
from app.services.predictions import PredictionService, ResolvedVersion


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


async def predict_rows(
    service: PredictionService, version: ModelVersion, rows: list[list[Any]]
) -> dict[str, Any]:
    """`predictions` for each row, plus `classes` and `probabilities` for a classifier.

    Raises app.errors.Invalid when a value does not fit the signature.
    """
    resolved = ResolvedVersion(id=version.id, name=version.model_name, version=version.version)
    # Tensors carry no JSON booleans (a BOOL tensor arrives as 0 and 1).
    prediction = await service.predict(resolved, instances=rows, booleans_possible=False)
    return {
        "model": {"name": version.model_name, "version": version.version},
        **prediction.as_dict(),
    }
