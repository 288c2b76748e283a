"""Reading tabular files into DataFrames, and the datasets that ship with scikit-learn."""

import io
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd

from app.ml.errors import DataError

FORMATS = ("csv", "parquet", "jsonl")


def read_frame(data: bytes, fmt: str) -> pd.DataFrame:
    """Parse `data` as `fmt` (csv | parquet | jsonl); DataError names what is wrong and where."""
    if not data.strip():
        raise DataError("the file is empty", code="empty_file")
    if fmt == "csv":
        frame = _read_csv(data)
    elif fmt == "parquet":
        frame = _read_parquet(data)
    elif fmt == "jsonl":
        frame = _read_jsonl(data)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if frame.shape[1] == 0:
        raise DataError("the file has no columns", code="empty_file")
    if frame.shape[0] == 0:
        raise DataError("the file has a header but no rows", code="empty_file")
    blank = [str(c) for c in frame.columns if str(c).strip() == "" or str(c).startswith("Unnamed:")]
    if blank:
        raise DataError(f"every column needs a name; found unnamed column(s) {blank}")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _read_csv(data: bytes) -> pd.DataFrame:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"the CSV is not UTF-8 text (byte {exc.start} is invalid)") from exc
    try:
        return pd.read_csv(io.StringIO(text))
    except pd.errors.EmptyDataError as exc:
        raise DataError("the file is empty", code="empty_file") from exc
    except pd.errors.ParserError as exc:
        # pandas' message already names the line: "Expected 4 fields in line 7, saw 5".
        message = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        raise DataError(f"malformed CSV: {message}") from exc


def _read_parquet(data: bytes) -> pd.DataFrame:
    try:
        return pd.read_parquet(io.BytesIO(data))
    except Exception as exc:  # pyarrow raises several unrelated types for bad bytes
        raise DataError(f"not a readable Parquet file ({exc}); is it truncated?") from exc


def _read_jsonl(data: bytes) -> pd.DataFrame:
    records: list[dict[str, Any]] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"the JSON Lines file is not UTF-8 text (byte {exc.start})") from exc
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"malformed JSON Lines: line {number}, column {exc.colno}: {exc.msg}"
            ) from exc
        if not isinstance(record, dict):
            raise DataError(
                f"malformed JSON Lines: line {number} is a {type(record).__name__}; "
                "expected one JSON object per line"
            )
        records.append(record)
    return pd.DataFrame.from_records(records)


def column_dtype(series: pd.Series) -> str:
    """A short, stable dtype name for the API (int64, float64, bool, string, category...)."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int64"
    if pd.api.types.is_float_dtype(dtype):
        return "float64"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "string"


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _sklearn_loader(name: str) -> Callable[..., Any]:
    from sklearn import datasets

    loaders: dict[str, Callable[..., Any]] = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    return loaders[name]


BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")


def load_builtin(
    name: str, start: int | None = None, stop: int | None = None, shuffle_seed: int | None = None
) -> pd.DataFrame:
    """A scikit-learn dataset as a frame whose `target` column holds the class names.

    Classifiers get a categorical target that declares every class, so a row range
    that happens to hold fewer classes still knows the full label space.
    """
    bunch = _sklearn_loader(name)(as_frame=True)
    frame: pd.DataFrame = bunch.frame.copy()
    target_names = getattr(bunch, "target_names", None)
    if name != "diabetes" and target_names is not None:
        labels = [_plain(v) for v in target_names]
        codes = frame["target"].to_numpy().astype(int)
        frame["target"] = pd.Categorical.from_codes(codes, categories=pd.Index(labels))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(frame))
        frame = frame.iloc[order]
    total = len(frame)
    first = 0 if start is None else start
    last = total if stop is None else stop
    if first >= total or last > total:
        raise DataError(
            f"row range [{first}, {last}) is outside {name}, which has {total} rows",
            code="invalid_range",
        )
    return frame.iloc[first:last].reset_index(drop=True)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
