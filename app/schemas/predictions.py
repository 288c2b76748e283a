"""Prediction request and response: pydantic models for the OpenAPI document, and the
hand-written parser the hot path uses instead of validating the body with them."""

import json
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import Field, model_validator

from app.errors import Invalid
from app.schemas.common import RequestSchema, Schema
from app.schemas.models import ModelRef

Scalar = float | int | str | bool | None


class PredictRequest(RequestSchema):
    # Values are checked against the version's signature, which knows whether a row is a list
    # of numbers and categories or an image (nested lists), so that errors can name the place.
    instances: list[list[Any]] | None = Field(
        None,
        description="Rows of values in the version's signature order; for an image model, one "
        "image per instance as CxHxW (or HxW for one channel) nested lists, or C·H·W numbers.",
    )
    records: list[dict[str, Any]] | None = Field(
        None,
        description='Rows as objects keyed by input column name; for images {"image": ...}.',
    )

    model_config = {
        "json_schema_extra": {
            "examples": [
                {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
                {
                    "records": [
                        {
                            "sepal length (cm)": 5.1,
                            "sepal width (cm)": 3.5,
                            "petal length (cm)": 1.4,
                            "petal width (cm)": 0.2,
                        }
                    ]
                },
            ]
        }
    }

    @model_validator(mode="after")
    def _exactly_one_form(self) -> "PredictRequest":
        if (self.instances is None) == (self.records is None):
            raise ValueError("give exactly one of 'instances' or 'records'")
        rows = self.instances if self.instances is not None else self.records
        if not rows:
            raise ValueError("no rows: expected at least one instance or record")
        return self


class PredictResponse(Schema):
    model: ModelRef
    predictions: list[Any]
    classes: list[Any] | None = Field(None, description="Classification only.")
    probabilities: list[list[float]] | None = Field(
        None, description="Classification only: one row per instance, columns in `classes` order."
    )


@dataclass(frozen=True)
class PredictBody:
    instances: list[Any] | None
    records: list[Any] | None


_FIELDS = ("instances", "records")


def parse_predict_body(body: bytes) -> PredictBody:
    """Parse and check the shape of a predict body, as PredictRequest would but cheaper.

    Values are checked later, against the version's signature. Raises Invalid with the
    `validation_error` code and FastAPI-style `errors` entries.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _lenient_json(body)
    if not isinstance(data, dict):
        raise _invalid(["body"], "expected a JSON object with 'instances' or 'records'")
    unknown = [key for key in data if key not in _FIELDS]
    if unknown:
        raise _invalid(["body", unknown[0]], "unknown field; expected 'instances' or 'records'")
    instances, records = data.get("instances"), data.get("records")
    if (instances is None) == (records is None):
        raise _invalid(["body"], "give exactly one of 'instances' or 'records'")
    field = "instances" if instances is not None else "records"
    rows = data[field]
    if not isinstance(rows, list):
        raise _invalid(["body", field], f"expected a list of rows, got {type(rows).__name__}")
    if not rows:
        raise _invalid(["body", field], "no rows: expected at least one instance or record")
    return PredictBody(instances=instances, records=records)


def _lenient_json(body: bytes) -> Any:
    # orjson refuses NaN, Infinity and numbers beyond float range. Python's parser reads them,
    # so that the signature check can say which instance and feature holds the bad value.
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise _invalid(["body", exc.pos], f"invalid JSON: {exc.msg}") from exc
    except ValueError as exc:  # not UTF-8
        raise _invalid(["body"], f"invalid JSON: {exc}") from exc


def _invalid(loc: list[str | int], message: str) -> Invalid:
    where = ".".join(str(part) for part in loc)
    return Invalid(
        "validation_error",
        f"the request is not valid: {where}: {message}",
        errors=[{"loc": loc, "msg": message}],
    )
