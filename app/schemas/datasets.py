from datetime import datetime
from typing import Any, Literal

from pydantic import Field, StrictBool, model_validator

from app.schemas.common import MAX_INT32, RequestSchema, Schema
from app.schemas.metadata import Description, Tags

BuiltinName = Literal["iris", "wine", "breast_cancer", "digits", "diabetes"]
IMAGE_BUILTINS = ("digits",)


class ColumnRead(Schema):
    name: str
    dtype: str
    # Left out of tabular columns rather than shown as null.
    shape: list[int] | None = Field(
        None,
        exclude_if=lambda value: value is None,
        description="Image columns only: the shape of one image, [channels, height, width].",
    )


class DatasetRead(Schema):
    id: str
    name: str
    format: str
    rows: int
    columns: list[ColumnRead]
    size_bytes: int
    sha256: str
    origin: dict[str, Any] = Field(
        default_factory=dict,
        description="How it was made: `upload` (with the file's name), `builtin` (with the "
        "import's request) or `batch_prediction` (with the job, the input dataset and the "
        "model version).",
    )
    created_at: datetime
    created_by: str | None = Field(
        None, description="The API key that added it (null with auth disabled)."
    )
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None


class BuiltinDatasetCreate(RequestSchema):
    name: BuiltinName = Field(description="A dataset that ships with scikit-learn.")
    start: int | None = Field(
        None, ge=0, le=MAX_INT32, description="First row (inclusive), after shuffling."
    )
    stop: int | None = Field(
        None, ge=1, le=MAX_INT32, description="Last row (exclusive), after shuffling."
    )
    shuffle_seed: int | None = Field(
        None,
        ge=0,
        le=2**32 - 1,
        description="Shuffle the rows with this seed before taking the range.",
    )
    as_images: StrictBool = Field(
        False,
        description="Store an image dataset as images (digits: 1x8x8) for a CNN, not as a table.",
    )
    tags: Tags = Field(default_factory=dict)
    description: Description = None

    model_config = {"json_schema_extra": {"examples": [{"name": "iris", "start": 0, "stop": 100}]}}

    @model_validator(mode="after")
    def _range_is_ordered(self) -> "BuiltinDatasetCreate":
        if self.start is not None and self.stop is not None and self.start >= self.stop:
            raise ValueError(f"start ({self.start}) must be less than stop ({self.stop})")
        if self.as_images and self.name not in IMAGE_BUILTINS:
            raise ValueError(
                f"as_images works for {list(IMAGE_BUILTINS)}; {self.name} is tabular data"
            )
        return self


class ColumnSummary(Schema):
    name: str
    dtype: str
    missing: int
    min: float | None = None
    mean: float | None = None
    max: float | None = None
    distinct: int | None = None
    top: list[dict[str, Any]] | None = Field(
        None, description="Text columns: the most common values and their counts."
    )


class DatasetPreview(Schema):
    id: str
    columns: list[str]
    rows: list[list[Any]] = Field(description="The first rows, values in `columns` order.")
    summary_rows: int = Field(description="How many first rows the summary describes.")
    summary: list[ColumnSummary]
