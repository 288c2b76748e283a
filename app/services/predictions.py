"""Prediction use case: resolve the version, fetch its predictor, check inputs, predict."""

from typing import Any

from sqlalchemy.orm import Session

from app.db.models import ModelVersion
from app.errors import Invalid
from app.ml.errors import DataError
from app.schemas.predictions import PredictRequest
from app.services import registry as registry_service
from app.serving.cache import ModelCache
from app.serving.predictor import Predictor, VersionSpec


def _spec(version: ModelVersion) -> VersionSpec:
    return VersionSpec(
        name=version.model_name,
        version=version.version,
        task=version.task,
        inputs=version.signature["inputs"],
        target=version.signature.get("target", ""),
        architecture=version.architecture,
        preprocessing=version.preprocessing,
    )


def predict(
    session: Session,
    cache: ModelCache,
    name: str,
    request: PredictRequest,
    *,
    version: int | None = None,
    alias: str | None = None,
) -> dict[str, Any]:
    """Predict with the version asked for (default: alias `production`, else the latest)."""
    found = registry_service.resolve(session, name, version=version, alias=alias)

    def load() -> Predictor:
        weights = registry_service.get_version(
            session, found.model_name, found.version, with_weights=True
        ).weights
        return Predictor.load(_spec(found), weights)

    predictor = cache.get_or_load(found.id, load)
    try:
        if request.instances is not None:
            data = predictor.inputs_from_instances(request.instances)
        else:
            assert request.records is not None
            data = predictor.inputs_from_records(request.records)
        output = predictor.predict(data)
    except DataError as exc:
        raise Invalid(exc.code, str(exc)) from exc
    return {"model": {"name": found.model_name, "version": found.version}, **output}
