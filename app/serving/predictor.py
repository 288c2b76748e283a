"""A loaded model version: inputs checked against its signature, one forward pass, outputs.

The hot path turns rows into the model's float32 matrix in one NumPy call when every input
is numeric. Anything that call cannot vouch for (a string, a boolean, a missing value, a
ragged row, a non-finite number) goes down the checked path, which walks the values one by
one so that the error names the instance and the feature.
"""

import math
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
import pandas as pd
import torch

from app.ml import images, serialization, tabular
from app.ml.errors import DataError
from app.ml.inference import inference_forward


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


@dataclass(frozen=True)
class Prediction:
    """One request's outputs; arrays stay NumPy so they serialise without a Python copy."""

    predictions: list[Any] | np.ndarray
    classes: list[Any] | None = None
    probabilities: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain Python values: predictions, and for classification classes and probabilities."""
        predictions = self.predictions
        out: dict[str, Any] = {
            "predictions": predictions.tolist()
            if isinstance(predictions, np.ndarray)
            else list(predictions)
        }
        if self.classes is not None and self.probabilities is not None:
            out["classes"] = list(self.classes)
            out["probabilities"] = self.probabilities.tolist()
        return out


class Predictor:
    def __init__(self, spec: VersionSpec, model: torch.nn.Module) -> None:
        self.spec = spec
        self.model = model
        self.input_names = [column["name"] for column in spec.inputs]
        self.width = len(self.input_names)
        tensors = chain(model.parameters(), model.buffers())
        self.memory_bytes = sum(t.numel() * t.element_size() for t in tensors)
        self.parameter_count = sum(p.numel() for p in model.parameters())
        features = spec.preprocessing["features"]
        # [C, H, W] for a model of images; None for a model of tabular features.
        self.image_shape: list[int] | None = (
            [int(side) for side in features["shape"]] if images.is_image_spec(features) else None
        )
        columns = features.get("columns", [])
        self.input_dim = int(features["input_dim"])
        self._numeric = {column["name"] for column in columns if column["kind"] == "numeric"}
        self._numeric_only = (
            self.image_shape is None
            and [c["name"] for c in columns] == self.input_names
            and all(column["kind"] == "numeric" for column in columns)
        )
        if self._numeric_only:
            self._mean = np.array([column["mean"] for column in columns], dtype=np.float64)
            self._std = np.array([column["std"] for column in columns], dtype=np.float64)
        # Which input each column of the encoded matrix comes from, to name it in errors.
        self._encoded_names: list[str] = []
        for column in columns:
            size = 1 if column["kind"] == "numeric" else len(column["categories"])
            self._encoded_names += [column["name"]] * size
        self._forward = inference_forward(model)
        target = spec.preprocessing["target"]
        self.classification = spec.task == "classification"
        self.classes: list[Any] | None = target["classes"] if self.classification else None
        self._class_array = np.array(self.classes or [], dtype=object)
        self._target = target

    @classmethod
    def load(cls, spec: VersionSpec, weights: bytes) -> "Predictor":
        architecture = spec.architecture
        model = serialization.load_model(
            architecture, architecture["input_dim"], architecture["output_dim"], weights
        )
        return cls(spec, model)

    # -- inputs --------------------------------------------------------------------------

    def features_from_instances(
        self, instances: list[Any], *, booleans_possible: bool = True
    ) -> np.ndarray:
        """The encoded float32 matrix (rows, input_dim) for rows of values in signature order.

        `booleans_possible=False` is the caller's promise that no value is a JSON boolean (for
        instance because `true`/`false` never occur in the request body): NumPy would read
        them as 1 and 0, so otherwise they are looked for.
        """
        if self.image_shape is not None:
            return self._encoded_images(instances)
        if self._numeric_only:
            encoded = self._fast_numeric(instances, booleans_possible)
            if encoded is not None:
                return encoded
        return self._checked(self._checked_rows(instances), "instance")

    def features_from_records(
        self, records: list[Any], *, booleans_possible: bool = True
    ) -> np.ndarray:
        """The encoded float32 matrix for rows given as objects keyed by input name."""
        if self.image_shape is not None:
            return self._encoded_images(self._images_from_records(records))
        if self._numeric_only:
            names = self.input_names
            try:
                rows = [[record[name] for name in names] for record in records]
            except (KeyError, TypeError):
                rows = None
            # Every record holds every name, so equal totals mean no record has extra keys.
            if rows is not None and sum(map(len, records)) == self.width * len(records):
                encoded = self._fast_numeric(rows, booleans_possible)
                if encoded is not None:
                    return encoded
        return self._checked(self._rows_from_records(records), "record")

    def _encoded_images(self, instances: list[Any]) -> np.ndarray:
        assert self.image_shape is not None
        array = images.instances_to_images(instances, self.image_shape)
        return images.transform_images(self.spec.preprocessing["features"], array)

    def _images_from_records(self, records: list[Any]) -> list[Any]:
        allowed = {images.IMAGE_COLUMN, self.spec.target}
        for index, record in enumerate(records):
            if (
                not isinstance(record, dict)
                or images.IMAGE_COLUMN not in record
                or set(record) - allowed
            ):
                found = sorted(record) if isinstance(record, dict) else _describe(record)
                raise DataError(
                    f"record {index}: expected one field {images.IMAGE_COLUMN!r} holding the "
                    f"image, got {found}",
                    code="feature_mismatch",
                )
        return [record[images.IMAGE_COLUMN] for record in records]

    def _fast_numeric(self, rows: list[Any], booleans_possible: bool) -> np.ndarray | None:
        """The matrix in one NumPy pass, or None when the checked path must look closer."""
        try:
            values = np.array(rows)
        except (ValueError, TypeError):  # ragged rows, mixed nesting
            return None
        # Strings, None and nested values give other dtypes ('U', 'O') or shapes.
        if values.ndim != 2 or values.shape[1] != self.width or values.dtype.kind not in "iuf":
            return None
        if booleans_possible and bool in set(map(type, chain.from_iterable(rows))):
            return None
        return self._standardised(values)

    def features_from_matrix(self, values: np.ndarray) -> np.ndarray | None:
        """The encoded float32 matrix for a (rows, width) array of raw numeric inputs.

        None when this version needs a closer look at the values (inputs that are not all
        numeric, an image model, another width, a value that overflows once standardised):
        the caller then goes through features_from_instances, whose errors name the place.
        """
        if not self._numeric_only or values.ndim != 2 or values.shape[1] != self.width:
            return None
        return self._standardised(values)

    def _standardised(self, values: np.ndarray) -> np.ndarray | None:
        with np.errstate(over="ignore"):  # an overflow shows as inf, caught just below
            encoded = ((values - self._mean) / self._std).astype(np.float32)
        if not np.isfinite(encoded).all():
            return None
        return encoded

    def _checked_rows(self, instances: list[Any]) -> list[list[Any]]:
        width = self.width
        for index, row in enumerate(instances):
            if not isinstance(row, list | tuple | np.ndarray):
                raise DataError(
                    f"instance {index}: expected a list of {width} values in the order "
                    f"{self.input_names}, got {_describe(row)}",
                    code="feature_mismatch",
                )
            if len(row) != width:
                raise DataError(
                    f"expected {width} features {self.input_names}, got {len(row)} in "
                    f"instance {index}",
                    code="feature_mismatch",
                )
        return instances

    def _rows_from_records(self, records: list[Any]) -> list[list[Any]]:
        allowed = set(self.input_names) | {self.spec.target}
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise DataError(
                    f"record {index}: expected an object keyed by input name "
                    f"{self.input_names}, got {_describe(record)}",
                    code="feature_mismatch",
                )
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
        return [[record[name] for name in self.input_names] for record in records]

    def _checked(self, rows: list[list[Any]], label: str) -> np.ndarray:
        """Check every value, then encode; errors name the row and the feature."""
        for index, row in enumerate(rows):
            for name, value in zip(self.input_names, row, strict=True):
                where = f"{label} {index}, feature {name!r}"
                if name not in self._numeric:
                    if isinstance(value, list | dict):
                        raise DataError(f"{where}: expected a single value, got {value!r}")
                    continue
                if isinstance(value, bool | np.bool_) or not isinstance(value, _NUMBERS):
                    raise DataError(f"{where}: expected a number, got {_describe(value)}")
                if not _finite(value):
                    raise DataError(f"{where}: expected a finite number, got {_describe(value)}")
        frame = pd.DataFrame(rows, columns=self.input_names, dtype=object)
        with np.errstate(over="ignore"):
            encoded = tabular.transform_features(self.spec.preprocessing["features"], frame)
        bad = np.argwhere(~np.isfinite(encoded))
        if bad.size:
            at, column = (int(i) for i in bad[0])
            name = self._encoded_names[column]
            value = rows[at][self.input_names.index(name)]
            raise DataError(
                f"{label} {at}, feature {name!r}: {value} is out of the range this model "
                "can take (it overflows float32 once standardised)"
            )
        return encoded

    # -- forward pass and outputs --------------------------------------------------------

    def forward(self, encoded: np.ndarray) -> np.ndarray:
        """Class probabilities (rows, classes) or standardised regression outputs (rows,).

        Safe to call from any thread; rows are independent, so a batch of several requests'
        rows gives each the same outputs as running it alone.
        """
        with torch.inference_mode():
            out = self._forward(torch.from_numpy(encoded))
            out = torch.softmax(out, dim=1) if self.classification else out.reshape(len(encoded))
            result: np.ndarray = out.numpy()
        return result

    def outputs(self, raw: np.ndarray) -> Prediction:
        """Turn a slice of `forward`'s output into the response's values."""
        if self.classification:
            best = raw.argmax(axis=1)
            return Prediction(
                predictions=self._class_array[best].tolist(),
                classes=self.classes,
                probabilities=raw,
            )
        return Prediction(predictions=tabular.decode_regression(self._target, raw))


_NUMBERS = (int, float, np.integer, np.floating)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float
        return False


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
