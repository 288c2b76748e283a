from typing import Any

from pydantic import Field, model_validator

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
    classes: list[Any] | None = None
    probabilities: list[list[float]] | None = None
