"""Features and targets from either kind of dataset: a tabular frame or an image set.

Callers that only need "the feature matrix and the labels" use these functions, so the
training code does not care which kind of data it got.
"""

from typing import Any

import numpy as np
import pandas as pd

from app.ml import images, tabular
from app.ml.errors import DataError
from app.ml.frames import column_dtype

Data = pd.DataFrame | images.ImageSet


def labels(data: Data, target: str) -> pd.Series:
    """The target column."""
    if isinstance(data, images.ImageSet):
        if target != data.labels.name:
            raise DataError(
                f"image datasets hold their labels in column {data.labels.name!r}, not {target!r}",
                code="missing_column",
            )
        return data.labels
    if target not in data.columns:
        raise DataError(f"column {target!r} is missing", code="missing_column")
    return data[target]


def feature_names(data: Data, target: str, requested: list[str] | None) -> list[str]:
    """The requested feature columns, or by default every column but the target."""
    if isinstance(data, images.ImageSet):
        return [images.IMAGE_COLUMN]
    return requested or [c for c in data.columns if c != target]


def fit_features(data: Data, features: list[str]) -> dict[str, Any]:
    """A fitted feature spec: per-channel scaling for images, `tabular.fit_features` otherwise."""
    if isinstance(data, images.ImageSet):
        return images.fit_image_scaling(data.images)
    return tabular.fit_features(data, features)


def signature_inputs(data: Data, features: list[str]) -> list[dict[str, Any]]:
    """The model's inputs as a version's signature lists them."""
    if isinstance(data, images.ImageSet):
        return [{"name": images.IMAGE_COLUMN, "dtype": "float32", "shape": data.shape}]
    return [{"name": name, "dtype": column_dtype(data[name])} for name in features]


def encode_features(spec: dict[str, Any], data: Data) -> np.ndarray:
    """The float32 feature matrix (n, input_dim) a model reads."""
    if images.is_image_spec(spec):
        if not isinstance(data, images.ImageSet):
            raise DataError("the model reads images but the data is a table", "feature_mismatch")
        return images.transform_images(spec, data.images)
    if isinstance(data, images.ImageSet):
        raise DataError("the model reads a table but the data holds images", "feature_mismatch")
    return tabular.transform_features(spec, data)


def encode(
    data: Data, feature_spec: dict[str, Any], target_spec: dict[str, Any], target: str
) -> tuple[np.ndarray, np.ndarray]:
    """Features and encoded target, ready for `training.fit`."""
    x = encode_features(feature_spec, data)
    y = tabular.encode_target(target_spec, labels(data, target))
    return x, y


def architecture_inputs(spec: dict[str, Any]) -> dict[str, Any]:
    """What an architecture needs to know about its input besides `input_dim`."""
    if images.is_image_spec(spec):
        return {"input_shape": list(spec["shape"])}
    return {}
