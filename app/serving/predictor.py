"""A loaded model version: its inputs are checked against the signature, then one forward pass."""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.ml import images, inputs, serialization, tabular, training
from app.ml.errors import DataError


@dataclass(frozen=True)
class VersionSpec:
    """What a prediction needs besides the weights; it travels with the version."""

    name: str
    version: int
    task: str
    inputs: list[dict[str, Any]]
    target: str
    architecture: dict[str, Any]
    preprocessing: dict[str, Any]


class Predictor:
    def __init__(self, spec: VersionSpec, model: torch.nn.Module) -> None:
        self.spec = spec
        self.model = model
        self.input_names = [column["name"] for column in spec.inputs]
        features = spec.preprocessing["features"]
        # [C, H, W] for a model of images; None for a model of tabular features.
        self.image_shape: list[int] | None = (
            list(features["shape"]) if images.is_image_spec(features) else None
        )
        self._numeric = {
            column["name"] for column in features.get("columns", []) if column["kind"] == "numeric"
        }

    @classmethod
    def load(cls, spec: VersionSpec, weights: bytes) -> "Predictor":
        architecture = spec.architecture
        model = serialization.load_model(
            architecture, architecture["input_dim"], architecture["output_dim"], weights
        )
        return cls(spec, model)

    def inputs_from_instances(self, instances: list[list[Any]]) -> inputs.Data:
        """Checked model inputs from `instances`: a frame, or images for an image model."""
        if self.image_shape is None:
            return self.frame_from_instances(instances)
        return self._image_set(images.instances_to_images(instances, self.image_shape))

    def inputs_from_records(self, records: list[dict[str, Any]]) -> inputs.Data:
        """Checked model inputs from `records`: a frame, or images for an image model."""
        if self.image_shape is None:
            return self.frame_from_records(records)
        allowed = {images.IMAGE_COLUMN, self.spec.target}
        for index, record in enumerate(records):
            unknown = sorted(set(record) - allowed)
            if images.IMAGE_COLUMN not in record or unknown:
                raise DataError(
                    f"record {index}: expected one field {images.IMAGE_COLUMN!r} holding the "
                    f"image, got {sorted(record)}",
                    code="feature_mismatch",
                )
        pictures = [record[images.IMAGE_COLUMN] for record in records]
        return self._image_set(images.instances_to_images(pictures, self.image_shape))

    def _image_set(self, array: np.ndarray) -> images.ImageSet:
        no_labels = pd.Series([None] * len(array), name=images.LABEL_COLUMN, dtype=object)
        return images.ImageSet(images=array, labels=no_labels, stored_dtype="float32")

    def frame_from_instances(self, instances: list[list[Any]]) -> pd.DataFrame:
        width = len(self.input_names)
        for index, row in enumerate(instances):
            if len(row) != width:
                raise DataError(
                    f"expected {width} features {self.input_names}, got {len(row)} in "
                    f"instance {index}",
                    code="feature_mismatch",
                )
        return self._checked(pd.DataFrame(instances, columns=self.input_names, dtype=object))

    def frame_from_records(self, records: list[dict[str, Any]]) -> pd.DataFrame:
        expected = set(self.input_names)
        allowed = expected | {self.spec.target}
        for index, record in enumerate(records):
            missing = [name for name in self.input_names if name not in record]
            unknown = sorted(set(record) - allowed)
            if missing or unknown:
                parts = []
                if missing:
                    parts.append(f"missing {missing}")
                if unknown:
                    parts.append(f"unknown {unknown}")
                raise DataError(
                    f"record {index}: {' and '.join(parts)}; expected the fields "
                    f"{self.input_names}",
                    code="feature_mismatch",
                )
        frame = pd.DataFrame.from_records(records, columns=self.input_names)
        return self._checked(frame.astype(object))

    def _checked(self, frame: pd.DataFrame) -> pd.DataFrame:
        for name in self.input_names:
            if name not in self._numeric:
                continue
            for index, value in enumerate(frame[name].to_numpy()):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise DataError(
                        f"row {index}, feature {name!r}: expected a number, got {value!r}"
                    )
                if not math.isfinite(value):
                    raise DataError(
                        f"row {index}, feature {name!r}: expected a finite number, got {value}"
                    )
        return frame

    def predict(self, data: inputs.Data) -> dict[str, Any]:
        """Predictions for every row or image; classification adds classes and probabilities."""
        x = inputs.encode_features(self.spec.preprocessing["features"], data)
        output = training.predict_batch(self.model, x, self.spec.task)
        target_spec = self.spec.preprocessing["target"]
        if self.spec.task == "classification":
            classes = target_spec["classes"]
            best = np.argmax(output, axis=1)
            return {
                "predictions": [classes[i] for i in best.tolist()],
                "classes": classes,
                "probabilities": output.astype(float).tolist(),
            }
        values = tabular.decode_regression(target_spec, output)
        return {"predictions": values.astype(float).tolist()}
