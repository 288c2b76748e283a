"""Job-creation checks for image datasets and CNN models (the tabular ones live in jobs.py)."""

from typing import Any

from app.db.models import Dataset, ModelVersion
from app.enums import Task
from app.errors import Invalid
from app.ml.architectures import cnn_feature_shape
from app.schemas.jobs import CnnArchitecture, FineTuningCreate, SourceTrainingCreate

_NUMERIC_DTYPES = {"int64", "float64", "bool"}


def dataset_image_shape(dataset: Dataset) -> list[int] | None:
    """[C, H, W] of an image dataset's images; None for a table."""
    return _image_shape(dataset.columns)


def model_image_shape(base: ModelVersion) -> list[int] | None:
    """[C, H, W] a model version reads; None for a model of tabular features."""
    return _image_shape(base.signature["inputs"])


def check_source_request(dataset: Dataset, request: SourceTrainingCreate) -> SourceTrainingCreate:
    """Check a source-training request against the dataset's kind; returns it, completed.

    An image dataset with no architecture given gets the default CNN.
    """
    shape = dataset_image_shape(dataset)
    architecture = request.architecture
    if shape is None:
        if isinstance(architecture, CnnArchitecture):
            raise Invalid(
                "architecture_mismatch",
                f"a cnn needs an image dataset (.npz, or a builtin with as_images), but dataset "
                f'{dataset.id} is a table; use the default {{"type": "mlp"}}',
            )
        return request
    if "architecture" not in request.model_fields_set:
        request = request.model_copy(update={"architecture": CnnArchitecture(type="cnn")})
    elif not isinstance(architecture, CnnArchitecture):
        raise Invalid(
            "architecture_mismatch",
            f"dataset {dataset.id} holds {_text(shape)} images, which an mlp cannot read; "
            'use {"type": "cnn"}',
        )
    assert isinstance(request.architecture, CnnArchitecture)
    try:
        cnn_feature_shape(shape, request.architecture.channels)
    except ValueError as exc:
        raise Invalid("invalid_architecture", str(exc)) from exc
    label = _label_column(dataset, request.target_column)
    if request.feature_columns not in (None, [_IMAGE]):
        raise Invalid(
            "invalid_feature_columns",
            f"an image dataset has one feature column, {_IMAGE!r}; leave feature_columns out",
        )
    if request.task == Task.REGRESSION and label["dtype"] not in _NUMERIC_DTYPES:
        raise Invalid(
            "invalid_target",
            f"task is regression but label column {label['name']!r} holds {label['dtype']} "
            "values; expected numbers",
        )
    if dataset.rows < 2:
        raise Invalid("dataset_too_small", f"dataset {dataset.id} has {dataset.rows} image(s)")
    return request


def check_fine_tuning_request(
    dataset: Dataset, request: FineTuningCreate, base: ModelVersion
) -> None:
    """Image datasets fine-tune image models of the same image shape, and nothing else."""
    data_shape = dataset_image_shape(dataset)
    model_shape = model_image_shape(base)
    model = f"{base.model_name} version {base.version}"
    if model_shape is None:
        names = [column["name"] for column in base.signature["inputs"]]
        raise Invalid(
            "feature_mismatch",
            f"{model} reads {len(names)} tabular features {names}, but dataset {dataset.id} "
            f"holds {_text(data_shape or [])} images",
        )
    if data_shape is None:
        raise Invalid(
            "feature_mismatch",
            f"{model} reads {_text(model_shape)} images, but dataset {dataset.id} is a table; "
            "upload the target images as .npz",
        )
    if data_shape != model_shape:
        raise Invalid(
            "feature_mismatch",
            f"{model} reads {_text(model_shape)} images (CxHxW), but dataset {dataset.id} "
            f"holds {_text(data_shape)} images",
        )
    label = _label_column(dataset, request.target_column)
    if base.task == Task.REGRESSION and label["dtype"] not in _NUMERIC_DTYPES:
        raise Invalid(
            "target_mismatch",
            f"the base model does regression but label column {label['name']!r} holds "
            f"{label['dtype']} values; expected numbers",
        )


_IMAGE = "image"


def _label_column(dataset: Dataset, target: str) -> dict[str, Any]:
    labels = [column for column in dataset.columns if column.get("shape") is None]
    for column in labels:
        if column["name"] == target:
            return column
    names = [column["name"] for column in labels]
    raise Invalid(
        "column_not_found",
        f"target column {target!r} is not in image dataset {dataset.id}; its label column "
        f"is {names[0] if names else None!r}",
    )


def _image_shape(columns: list[dict[str, Any]]) -> list[int] | None:
    for column in columns:
        shape = column.get("shape")
        if shape is not None:
            return [int(side) for side in shape]
    return None


def _text(shape: list[int]) -> str:
    return "x".join(str(side) for side in shape)
