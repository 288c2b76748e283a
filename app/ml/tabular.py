"""Tabular preprocessing whose fitted state is a plain JSON-serialisable dict.

Row numbers in error messages are positions in the data, counted from 0.
"""

from typing import Any

import numpy as np
import pandas as pd

from app.ml.errors import DataError

# Integer targets with this many distinct values or fewer are read as class labels.
MAX_INTEGER_CLASSES = 20


def infer_task(series: pd.Series) -> str:
    """Guess "classification" or "regression" from a target column's dtype and values."""
    dtype = series.dtype
    if (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    ):
        return "classification"
    if pd.api.types.is_integer_dtype(dtype) and series.nunique() <= MAX_INTEGER_CLASSES:
        return "classification"
    return "regression"


def fit_features(frame: pd.DataFrame, feature_columns: list[str]) -> dict[str, Any]:
    """Learn standardisation for numeric columns and the category list of the others."""
    if not feature_columns:
        raise DataError("no feature columns were given")
    if len(frame) == 0:
        raise DataError("the data has no rows")
    columns: list[dict[str, Any]] = []
    input_dim = 0
    for name in feature_columns:
        series = _column(frame, name)
        if not series.notna().any():
            raise DataError(f"column {name!r} has no values (every row is empty)")
        if _is_numeric(series.dtype):
            values = finite_numbers(series, name)
            mean, std = _standardisation(values)
            columns.append({"name": name, "kind": "numeric", "mean": mean, "std": std})
            input_dim += 1
        else:
            categories = _categories(series)
            columns.append({"name": name, "kind": "categorical", "categories": categories})
            input_dim += len(categories)
    return {"columns": columns, "input_dim": input_dim}


def _standardisation(values: np.ndarray) -> tuple[float, float]:
    """Mean and std of a numeric column; std 1 for a constant column.

    A column of one repeated value can have a std of ~1e-17 rather than 0 (the mean's
    rounding); dividing by that would turn any other value into ~1e16, so a spread at
    rounding level of the values' size counts as none.
    """
    mean = float(values.mean())
    std = float(values.std())
    if not np.isfinite(std) or std == 0.0 or std <= 1e-9 * abs(mean):
        std = 1.0
    return mean, std


def transform_features(spec: dict[str, Any], frame: pd.DataFrame) -> np.ndarray:
    """Encode `frame` as a float32 matrix (n, input_dim) following a `fit_features` spec.

    Numeric columns are standardised and may arrive as strings (JSON records); categorical
    columns become one-hot blocks. A category not seen when fitting, or a missing
    categorical value, gives an all-zero block rather than an error, so predictions still
    work on new levels.
    """
    n = len(frame)
    out = np.zeros((n, int(spec["input_dim"])), dtype=np.float32)
    offset = 0
    for column in spec["columns"]:
        name = column["name"]
        series = _column(frame, name)
        if column["kind"] == "numeric":
            values = finite_numbers(series, name)
            out[:, offset] = (values - column["mean"]) / column["std"]
            offset += 1
        elif column["kind"] == "categorical":
            categories: list[str] = column["categories"]
            codes = _codes(series, categories)
            known = codes >= 0
            out[np.flatnonzero(known), offset + codes[known]] = 1.0
            offset += len(categories)
        else:
            raise ValueError(f"unknown column kind {column['kind']!r} for column {name!r}")
    return out


def refit_scaling(spec: dict[str, Any], frame: pd.DataFrame) -> dict[str, Any]:
    """The same encoding with every numeric column's mean and std refitted on `frame`.

    Categories and the input layout stay as they are, so a model trained on the original
    spec reads the result unchanged; only where its numeric inputs are centred moves.
    """
    columns = []
    for column in spec["columns"]:
        if column["kind"] == "numeric":
            values = finite_numbers(_column(frame, column["name"]), column["name"])
            if len(values):
                mean, std = _standardisation(values)
                column = {**column, "mean": mean, "std": std}
            else:
                column = {**column, "std": 1.0}
        columns.append(column)
    return {**spec, "columns": columns}


def scaled_columns(spec: dict[str, Any]) -> list[tuple[str, int]]:
    """(name, position in the encoded matrix) of every standardised numeric input."""
    found = []
    offset = 0
    for column in spec["columns"]:
        if column["kind"] == "numeric":
            found.append((column["name"], offset))
            offset += 1
        else:
            offset += len(column["categories"])
    return found


def encoded_scaling(spec: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Per encoded input, the (mean, std) that `transform_features` standardised it by (0 and 1
    for one-hot inputs): an input read under one spec is `x * std + mean` in raw units."""
    means: list[float] = []
    stds: list[float] = []
    for column in spec["columns"]:
        if column["kind"] == "numeric":
            means.append(float(column["mean"]))
            stds.append(float(column["std"]))
        else:
            means.extend([0.0] * len(column["categories"]))
            stds.extend([1.0] * len(column["categories"]))
    return np.asarray(means, dtype=np.float64), np.asarray(stds, dtype=np.float64)


def fit_target(series: pd.Series, task: str) -> dict[str, Any]:
    """Learn the class list (classification) or the mean and std (regression) of a target."""
    name = series.name
    if len(series) == 0:
        raise DataError(f"target column {name!r} has no rows")
    _reject_missing(series, f"target column {name!r}")
    if task == "classification":
        dtype = series.dtype
        if isinstance(dtype, pd.CategoricalDtype):
            # Declared order wins and unseen classes are kept: a slice of a dataset must
            # still share the label space of the whole, or fine-tuning loses classes.
            classes = [_plain(v) for v in dtype.categories]
        else:
            classes = _sorted([_plain(v) for v in series.unique()])
        return {"task": "classification", "classes": classes}
    if task == "regression":
        values = finite_numbers(series, str(name), what=f"target column {name!r}")
        std = float(values.std())
        if not np.isfinite(std) or std == 0.0:
            std = 1.0
        return {"task": "regression", "mean": float(values.mean()), "std": std}
    raise ValueError(f"unknown task {task!r}")


def encode_target(spec: dict[str, Any], series: pd.Series) -> np.ndarray:
    """Class indices (int64) or standardised values (float32) for a target column."""
    name = series.name
    _reject_missing(series, f"target column {name!r}")
    if spec["task"] == "classification":
        classes = spec["classes"]
        index = pd.Index(classes, dtype=object)
        codes = index.get_indexer(pd.Index(series.astype(object), dtype=object))
        unknown = np.flatnonzero(codes < 0)
        if unknown.size:
            row = int(unknown[0])
            raise DataError(
                f"target column {name!r} row {row}: unknown label {_describe(series.iloc[row])}; "
                f"known classes are {classes}",
                code="unknown_label",
            )
        return codes.astype(np.int64)
    if spec["task"] == "regression":
        values = finite_numbers(series, str(name), what=f"target column {name!r}")
        return ((values - spec["mean"]) / spec["std"]).astype(np.float32)
    raise ValueError(f"unknown task {spec['task']!r}")


def decode_regression(spec: dict[str, Any], values: np.ndarray) -> np.ndarray:
    """Map standardised regression outputs back to the target's original scale."""
    return np.asarray(values, dtype=np.float64) * spec["std"] + spec["mean"]


def merge_classes(source_classes: list[Any], target_classes: list[Any]) -> list[Any]:
    """Source classes in order, then the target's extra classes sorted: the fine-tuning labels."""
    extra = [c for c in target_classes if c not in source_classes]
    return list(source_classes) + _sorted(list(dict.fromkeys(extra)))


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name not in frame.columns:
        raise DataError(f"column {name!r} is missing", code="missing_column")
    selected = frame[name]
    if isinstance(selected, pd.DataFrame):
        raise DataError(f"column {name!r} appears more than once")
    return selected


def _is_numeric(dtype: Any) -> bool:
    if isinstance(dtype, pd.CategoricalDtype):
        return False
    return bool(
        pd.api.types.is_bool_dtype(dtype)
        or pd.api.types.is_integer_dtype(dtype)
        or pd.api.types.is_float_dtype(dtype)
    )


def finite_numbers(series: pd.Series, name: str, *, what: str | None = None) -> np.ndarray:
    """float64 values of a column, or a DataError at the first missing or non-numeric row."""
    if _is_numeric(series.dtype):
        values = series.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        # Values from JSON records or CSV text arrive as strings or mixed objects.
        coerced = pd.to_numeric(series.astype(object), errors="coerce")
        values = pd.Series(coerced).to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        row = int(bad[0])
        raw = series.iloc[row]
        label = what or f"column {name!r}"
        if _is_missing(raw):
            raise DataError(f"{label} row {row}: missing value; expected a finite number")
        raise DataError(f"{label} row {row}: expected a finite number, got {_describe(raw)}")
    return values


def _reject_missing(series: pd.Series, label: str) -> None:
    missing = np.flatnonzero(series.isna().to_numpy())
    if missing.size:
        raise DataError(f"{label} row {int(missing[0])}: missing value")


def _categories(series: pd.Series) -> list[str]:
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return list(dict.fromkeys(str(_plain(v)) for v in dtype.categories))
    _, uniques = pd.factorize(series)
    return sorted({_as_string(v) for v in uniques})


def _codes(series: pd.Series, categories: list[str]) -> np.ndarray:
    """Position of each value in `categories`, -1 for unknown or missing values."""
    # Factorise first so the string conversion loops over distinct values, not rows.
    codes, uniques = pd.factorize(series)
    strings = [_as_string(v) for v in uniques]
    lookup = pd.Index(categories, dtype=object).get_indexer(pd.Index(strings, dtype=object))
    if not len(lookup):
        return np.full(len(series), -1, dtype=np.int64)
    return np.where(codes >= 0, lookup[np.maximum(codes, 0)], -1)


def _as_string(value: Any) -> str:
    # Python scalars first, so numpy's bools and numbers print as "True" and "2", not "np.True_".
    return str(_plain(value))


def _plain(value: Any) -> Any:
    """A JSON-native Python value for a numpy or pandas scalar."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, str | bool | int | float):
        return value
    return str(value)


def _sorted(values: list[Any]) -> list[Any]:
    try:
        return sorted(values)
    except TypeError:  # mixed types, e.g. 1 and "a", have no natural order
        return sorted(values, key=lambda v: (type(v).__name__, str(v)))


def _is_missing(value: Any) -> bool:
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):  # list-like cell
        return False


def _describe(value: Any) -> str:
    return repr(_plain(value)) if not isinstance(value, str) else repr(value)
