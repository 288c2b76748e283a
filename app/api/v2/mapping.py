"""How a tabular model looks as tensors.

Inputs, two forms (the server accepts either for any model):
- matrix: one input `input` of shape [N, F], features in signature order, any numeric
  datatype (FP32, FP64, INT64, ...). Advertised in the metadata when every feature is numeric.
- columns: one input per feature, named by column, shape [N] (or [N, 1]). Numeric features
  take a numeric datatype, string and category features BYTES (UTF-8). Advertised when the
  signature has a string feature, and always listed under the metadata's `features`.
- images (CNN versions): one input named as the signature's image input (`image`), FP32 (any
  numeric datatype accepted) of shape [N, C, H, W]; [N, H, W] for one channel and the flat
  [N, C*H*W] are accepted too, as are the names `image` and `input` alike.
Outputs:
- `predictions` [N]: class labels for a classifier (BYTES for string labels, INT64, FP64 or
  BOOL for labels of those types), the value for a regressor (FP64, as /v1 returns it).
- `probabilities` [N, C] FP32, classifiers only, columns in the order of `classes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from app.api.v2.errors import V2Error
from app.api.v2.tensors import NUMERIC_DTYPES, OutputTensor, Tensor
from app.schemas.v2 import ModelMetadata, TensorMetadata

if TYPE_CHECKING:
    # Types only: the API reaches the ORM through the services.
    from app.db.models import ModelVersion


MATRIX_INPUT = "input"
PREDICTIONS = "predictions"
PROBABILITIES = "probabilities"
PLATFORM = "pytorch"
_SIGNATURE_DATATYPES = {"int64": "INT64", "float64": "FP64", "bool": "BOOL"}
# Tensors become Python rows this many values at a time: one tolist() of millions of values
# holds the GIL for a tenth of a second, and the event loop cannot run meanwhile.
_STEP_VALUES = 32_768


@dataclass(frozen=True)
class Feature:
    name: str
    numeric: bool
    datatype: str  # what the metadata advertises for this feature's own tensor


def image_shape(version: ModelVersion) -> list[int] | None:
    """C, H, W for an image model, None for a tabular one."""
    spec = version.preprocessing["features"]
    if spec.get("kind") != "image":
        return None
    return [int(size) for size in spec["shape"]]


def features_of(version: ModelVersion) -> list[Feature]:
    if image_shape(version) is not None:
        return [Feature(column["name"], True, "FP32") for column in version.signature["inputs"]]
    kinds = {c["name"]: c["kind"] for c in version.preprocessing["features"]["columns"]}
    features = []
    for column in version.signature["inputs"]:
        numeric = kinds.get(column["name"]) == "numeric"
        datatype = _SIGNATURE_DATATYPES.get(column["dtype"], "FP64") if numeric else "BYTES"
        features.append(Feature(column["name"], numeric, datatype))
    return features


def label_datatype(classes: list[Any]) -> str:
    if all(isinstance(c, str) for c in classes):
        return "BYTES"
    if all(isinstance(c, bool) for c in classes):
        return "BOOL"
    if all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return "INT64"
    if all(isinstance(c, int | float) and not isinstance(c, bool) for c in classes):
        return "FP64"
    return "BYTES"


def output_names(version: ModelVersion) -> list[str]:
    if version.task == "classification":
        return [PREDICTIONS, PROBABILITIES]
    return [PREDICTIONS]


def metadata(version: ModelVersion, versions: list[int]) -> ModelMetadata:
    features = features_of(version)
    per_feature = [TensorMetadata(name=f.name, datatype=f.datatype, shape=[-1]) for f in features]
    shape = image_shape(version)
    if shape is not None:
        per_feature = [
            TensorMetadata(name=f.name, datatype="FP32", shape=[-1, *shape]) for f in features
        ]
        inputs = per_feature
    elif all(f.numeric for f in features):
        inputs = [TensorMetadata(name=MATRIX_INPUT, datatype="FP32", shape=[-1, len(features)])]
    else:
        inputs = per_feature
    classes: list[Any] = version.signature.get("classes") or []
    if version.task == "classification":
        outputs = [
            TensorMetadata(name=PREDICTIONS, datatype=label_datatype(classes), shape=[-1]),
            TensorMetadata(name=PROBABILITIES, datatype="FP32", shape=[-1, len(classes)]),
        ]
    else:
        outputs = [TensorMetadata(name=PREDICTIONS, datatype="FP64", shape=[-1])]
    return ModelMetadata(
        name=version.model_name,
        versions=[str(number) for number in versions],
        platform=PLATFORM,
        inputs=inputs,
        outputs=outputs,
        version=str(version.version),
        task=version.task,
        classes=classes if version.task == "classification" else None,
        features=per_feature,
    )


def rows_for(version: ModelVersion, tensors: list[Tensor]) -> list[list[Any]]:
    """Rows in the form the prediction path takes, for this version's kind of input."""
    shape = image_shape(version)
    if shape is not None:
        return _rows_from_images(tensors, features_of(version)[0].name, shape)
    return rows_from_tensors(tensors, features_of(version))


def _rows_from_images(tensors: list[Tensor], name: str, shape: list[int]) -> list[list[Any]]:
    channels, height, width = shape
    accepted = [[-1, channels, height, width], [-1, channels * height * width]]
    if channels == 1:
        accepted.insert(1, [-1, height, width])
    if len(tensors) != 1 or tensors[0].name not in (name, MATRIX_INPUT):
        raise V2Error(
            400,
            f"expected one input {name!r} of shape {accepted[0]} for this image model; got "
            f"inputs {sorted(t.name for t in tensors)}",
        )
    tensor = tensors[0]
    if tensor.datatype == "BYTES":
        raise V2Error(400, f"input {tensor.name!r} must be numeric (FP32, FP64, ...), not BYTES")
    given = list(tensor.shape)
    if not given or not any(given[1:] == form[1:] for form in accepted):
        raise V2Error(
            400,
            f"input {tensor.name!r} has shape {given}; expected one of "
            f"{', '.join(str(form) for form in accepted)}",
        )
    if given[0] == 0:
        raise V2Error(400, "no rows: the batch dimension is 0")
    return _rows(_plain(tensor.values).reshape(given[0], -1))


def matrix_for(version: ModelVersion, tensors: list[Tensor]) -> np.ndarray | None:
    """The rows as a float64 (N, F) matrix when they come as the matrix input of a tabular
    version whose features are all numeric; None otherwise (rows_for then reads them, and
    says what is wrong). The same values rows_for gives, without a Python object each."""
    if image_shape(version) is not None or len(tensors) != 1:
        return None
    features = features_of(version)
    tensor = tensors[0]
    if tensor.name != MATRIX_INPUT or {f.name for f in features} == {MATRIX_INPUT}:
        return None
    if tensor.datatype == "BYTES" or not all(f.numeric for f in features):
        return None
    if len(tensor.shape) != 2 or tensor.shape[1] != len(features) or tensor.shape[0] == 0:
        return None
    return _plain(tensor.values).astype(np.float64)


def rows_from_tensors(tensors: list[Tensor], features: list[Feature]) -> list[list[Any]]:
    """Rows of Python values in signature order, from either input form."""
    names = [f.name for f in features]
    given = {t.name: t for t in tensors}
    if set(given) == set(names):
        return _rows_from_columns(given, features)
    if len(tensors) == 1 and tensors[0].name == MATRIX_INPUT:
        return _rows_from_matrix(tensors[0], features)
    missing = [name for name in names if name not in given]
    unknown = sorted(set(given) - set(names))
    if not set(given) & set(names):
        raise V2Error(
            400,
            f"expected one input {MATRIX_INPUT!r} of shape [N, {len(names)}] or one input per "
            f"feature named {names}; got inputs {sorted(given)}",
        )
    parts = []
    if missing:
        parts.append(f"missing inputs for features {missing}")
    if unknown:
        parts.append(f"unknown inputs {unknown}")
    raise V2Error(400, f"{' and '.join(parts)}; expected one input per feature named {names}")


def _rows_from_matrix(tensor: Tensor, features: list[Feature]) -> list[list[Any]]:
    width = len(features)
    text = [f.name for f in features if not f.numeric]
    if text:
        raise V2Error(
            400,
            f"this model has string features {text}: send one input per feature, named by "
            f"column ({[f.name for f in features]}), instead of {MATRIX_INPUT!r}",
        )
    if tensor.datatype == "BYTES":
        raise V2Error(
            400, f"input {MATRIX_INPUT!r} must be numeric (FP32, FP64, INT64, ...), not BYTES"
        )
    if len(tensor.shape) != 2 or tensor.shape[1] != width:
        raise V2Error(
            400,
            f"input {MATRIX_INPUT!r} has shape {list(tensor.shape)}; expected [N, {width}] for "
            f"the features {[f.name for f in features]}",
        )
    if tensor.shape[0] == 0:
        raise V2Error(400, "no rows: the batch dimension is 0")
    return _rows(_plain(tensor.values))


def _rows_from_columns(given: dict[str, Tensor], features: list[Feature]) -> list[list[Any]]:
    columns = []
    count: int | None = None
    first = ""
    for feature in features:
        tensor = given[feature.name]
        shape = list(tensor.shape)
        if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
            raise V2Error(
                400, f"input {feature.name!r} has shape {shape}; expected [N], one value per row"
            )
        if count is None:
            count, first = shape[0], feature.name
        elif shape[0] != count:
            raise V2Error(
                400,
                f"inputs hold different numbers of rows: {first!r} has {count}, "
                f"{feature.name!r} has {shape[0]}",
            )
        values = tensor.values.reshape(-1)
        if tensor.datatype == "BYTES":
            if feature.numeric:
                raise V2Error(
                    400,
                    f"input {feature.name!r} is BYTES but the feature is numeric: send it as "
                    "FP32, FP64 or INT64",
                )
            columns.append([_text(value, feature.name) for value in values.tolist()])
        else:
            columns.append(_plain(values).tolist())
    if not count:
        raise V2Error(400, "no rows: the batch dimension is 0")
    return [list(row) for row in zip(*columns, strict=True)]


def _rows(matrix: np.ndarray) -> list[list[Any]]:
    """matrix.tolist(), a step of rows at a time."""
    step = max(1, _STEP_VALUES // max(1, matrix[0].size if len(matrix) else 1))
    rows: list[list[Any]] = []
    for start in range(0, len(matrix), step):
        rows.extend(matrix[start : start + step].tolist())
    return rows


def _plain(values: np.ndarray) -> np.ndarray:
    # The signature checks take booleans for mistakes, so a BOOL tensor counts as 0 and 1.
    return values.astype(np.int8) if values.dtype.kind == "b" else values


def _text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode()
    except UnicodeDecodeError as exc:
        raise V2Error(400, f"input {name!r} holds a value that is not UTF-8 text") from exc


def outputs_from_prediction(version: ModelVersion, result: dict[str, Any]) -> list[OutputTensor]:
    predictions = result["predictions"]
    if version.task != "classification":
        return [OutputTensor(PREDICTIONS, "FP64", np.asarray(predictions, dtype=np.float64))]
    datatype = label_datatype(result["classes"])
    if datatype == "BYTES":
        labels = np.empty(len(predictions), dtype=object)
        labels[:] = [p if isinstance(p, str) else str(p) for p in predictions]
    else:
        labels = np.asarray(predictions, dtype=NUMERIC_DTYPES[datatype])
    probabilities = np.asarray(result["probabilities"], dtype=np.float32)
    return [
        OutputTensor(PREDICTIONS, datatype, labels),
        OutputTensor(PROBABILITIES, "FP32", probabilities),
    ]
