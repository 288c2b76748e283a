import json
import time

import numpy as np
import pandas as pd
import pytest

from app.ml.errors import DataError
from app.ml.tabular import (
    decode_regression,
    encode_target,
    fit_features,
    fit_target,
    infer_task,
    merge_classes,
    refit_scaling,
    transform_features,
)


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "size": [1.0, 2.0, 3.0, 6.0],
            "count": [10, 20, 20, 30],
            "colour": ["red", "blue", "red", "green"],
            "flag": [True, False, True, True],
        }
    )


@pytest.mark.parametrize(
    ("series", "task"),
    [
        (pd.Series(["a", "b"]), "classification"),
        (pd.Series(["a", "b"], dtype=object), "classification"),
        (pd.Series(pd.Categorical(["a"])), "classification"),
        (pd.Series([True, False]), "classification"),
        (pd.Series([0, 1, 2, 1]), "classification"),
        (pd.Series(range(21)), "regression"),
        (pd.Series([0.5, 1.5]), "regression"),
    ],
)
def test_infer_task(series: pd.Series, task: str) -> None:
    assert infer_task(series) == task


def test_fit_features_spec_is_plain_json(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["size", "colour", "flag"])
    assert json.loads(json.dumps(spec)) == spec
    assert [c["kind"] for c in spec["columns"]] == ["numeric", "categorical", "numeric"]
    assert spec["columns"][1]["categories"] == ["blue", "green", "red"]
    assert spec["input_dim"] == 1 + 3 + 1


def test_numeric_columns_are_standardised_and_invertible(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["size", "count"])
    matrix = transform_features(spec, frame)
    assert matrix.dtype == np.float32
    np.testing.assert_allclose(matrix.mean(axis=0), 0.0, atol=1e-6)
    np.testing.assert_allclose(matrix.std(axis=0), 1.0, atol=1e-6)
    size = spec["columns"][0]
    np.testing.assert_allclose(matrix[:, 0] * size["std"] + size["mean"], frame["size"], rtol=1e-6)


def test_constant_numeric_column_gets_unit_std() -> None:
    spec = fit_features(pd.DataFrame({"c": [4.0, 4.0]}), ["c"])
    assert spec["columns"][0] == {"name": "c", "kind": "numeric", "mean": 4.0, "std": 1.0}


def test_a_column_constant_up_to_rounding_is_constant() -> None:
    # 221 copies of one value have a std of ~7e-18, not 0 (diabetes' `sex` within one sex).
    values = [0.0506801187398187] * 221
    spec = fit_features(pd.DataFrame({"c": values}), ["c"])
    assert spec["columns"][0]["std"] == 1.0
    other = transform_features(spec, pd.DataFrame({"c": [-0.0446416365069974]}))
    assert abs(float(other[0, 0])) < 1.0
    assert refit_scaling(spec, pd.DataFrame({"c": values}))["columns"][0]["std"] == 1.0
    # A genuinely tiny spread is kept.
    tiny = fit_features(pd.DataFrame({"c": [1e-15, 2e-15, 3e-15]}), ["c"])
    assert tiny["columns"][0]["std"] == pytest.approx(np.std([1e-15, 2e-15, 3e-15]))


def test_one_hot_blocks_round_trip(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["size", "colour"])
    block = transform_features(spec, frame)[:, 1:]
    assert block.sum(axis=1).tolist() == [1.0] * len(frame)
    categories = spec["columns"][1]["categories"]
    assert [categories[i] for i in block.argmax(axis=1)] == frame["colour"].tolist()


def test_declared_categories_are_kept_even_when_absent() -> None:
    data = pd.DataFrame({"c": pd.Categorical(["b", "b"], categories=["c", "b", "a"])})
    spec = fit_features(data, ["c"])
    assert spec["columns"][0]["categories"] == ["c", "b", "a"]
    assert transform_features(spec, data).tolist() == [[0.0, 1.0, 0.0]] * 2


def test_unknown_or_missing_category_is_an_all_zero_block(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["colour", "size"])
    new = pd.DataFrame({"colour": ["purple", None, "red"], "size": [1.0, 2.0, 3.0]})
    matrix = transform_features(spec, new)
    assert matrix[:2, :3].tolist() == [[0.0, 0.0, 0.0]] * 2
    assert matrix[2, :3].tolist() == [0.0, 0.0, 1.0]


def test_numeric_strings_from_json_records_are_accepted(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["size", "count", "colour"])
    records = [
        {"size": str(s), "count": str(c), "colour": k}
        for s, c, k in zip(frame["size"], frame["count"], frame["colour"], strict=True)
    ]
    as_text = pd.DataFrame.from_records(records)
    np.testing.assert_array_equal(
        transform_features(spec, as_text), transform_features(spec, frame)
    )


def test_transform_error_names_column_and_row(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["size"])
    bad = pd.DataFrame({"size": ["1", "2", "3", "abc"]})
    with pytest.raises(
        DataError, match=r"column 'size' row 3: expected a finite number, got 'abc'"
    ):
        transform_features(spec, bad)
    with pytest.raises(DataError, match=r"column 'size' row 1: missing value"):
        transform_features(spec, pd.DataFrame({"size": [1.0, None]}))
    with pytest.raises(
        DataError, match=r"column 'size' row 0: expected a finite number, got 'inf'"
    ):
        transform_features(spec, pd.DataFrame({"size": ["inf"]}))


def test_transform_missing_column_is_a_data_error(frame: pd.DataFrame) -> None:
    spec = fit_features(frame, ["size", "colour"])
    with pytest.raises(DataError, match="column 'colour' is missing"):
        transform_features(spec, frame[["size"]])


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (pd.DataFrame({"x": [1.0, 2.0, np.nan]}), r"column 'x' row 2: missing value"),
        (
            pd.DataFrame({"x": [1.0, np.inf]}),
            r"column 'x' row 1: expected a finite number, got inf",
        ),
        (pd.DataFrame({"x": pd.Series([None, None], dtype=object)}), r"column 'x' has no values"),
        (pd.DataFrame({"x": pd.Series([], dtype=float)}), "no rows"),
    ],
)
def test_fit_features_rejects_bad_columns(data: pd.DataFrame, message: str) -> None:
    with pytest.raises(DataError, match=message) as caught:
        fit_features(data, ["x"])
    assert caught.value.code == "invalid_data"


def test_transform_is_vectorised_for_ten_thousand_rows() -> None:
    rng = np.random.default_rng(0)
    big = pd.DataFrame(
        {"a": rng.normal(size=10_000).astype(str), "b": rng.choice(list("wxyz"), 10_000)}
    )
    spec = fit_features(big.assign(a=big["a"].astype(float)), ["a", "b"])
    start = time.perf_counter()
    matrix = transform_features(spec, big)
    assert time.perf_counter() - start < 0.5
    assert matrix.shape == (10_000, 5)


def test_fit_target_uses_declared_category_order_including_absent_classes() -> None:
    series = pd.Series(pd.Categorical(["b", "a"], categories=["c", "a", "b"]), name="y")
    spec = fit_target(series, "classification")
    assert spec == {"task": "classification", "classes": ["c", "a", "b"]}
    assert encode_target(spec, series).tolist() == [2, 1]


def test_fit_target_sorts_plain_labels_into_json_native_values() -> None:
    spec = fit_target(pd.Series(np.array([3, 1, 2, 1]), name="y"), "classification")
    assert spec["classes"] == [1, 2, 3]
    assert all(type(c) is int for c in spec["classes"])
    bools = fit_target(pd.Series([True, False]), "classification")["classes"]
    assert bools == [False, True] and all(type(c) is bool for c in bools)


def test_fit_target_rejects_nulls_and_non_numeric_regression() -> None:
    with pytest.raises(DataError, match=r"target column 'y' row 1: missing value"):
        fit_target(pd.Series(["a", None], name="y"), "classification")
    with pytest.raises(DataError, match=r"target column 'y' row 1: expected a finite number"):
        fit_target(pd.Series(["1.5", "x"], name="y"), "regression")
    with pytest.raises(DataError, match="no rows"):
        fit_target(pd.Series([], dtype=float, name="y"), "regression")


def test_encode_target_names_an_unknown_label() -> None:
    spec = {"task": "classification", "classes": ["cat", "dog"]}
    with pytest.raises(
        DataError, match=r"row 1: unknown label 'emu'; known classes are \['cat', 'dog'\]"
    ):
        encode_target(spec, pd.Series(["dog", "emu"], name="y"))


def test_regression_target_round_trip() -> None:
    series = pd.Series([10.0, 20.0, 30.0], name="y")
    spec = fit_target(series, "regression")
    encoded = encode_target(spec, series)
    assert encoded.dtype == np.float32
    np.testing.assert_allclose(encoded.mean(), 0.0, atol=1e-6)
    np.testing.assert_allclose(decode_regression(spec, encoded), series, rtol=1e-6)


def test_merge_classes_keeps_source_order_then_sorted_new_classes() -> None:
    assert merge_classes(["b", "a"], ["d", "a", "c", "c"]) == ["b", "a", "c", "d"]
    assert merge_classes([2, 0], [0, 2]) == [2, 0]
