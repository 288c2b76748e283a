"""Evaluation scores (app/ml/evaluation.py) against scikit-learn, chunked and one-shot."""

import itertools
import json
import math
from typing import Any

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)

from app.ml.evaluation import (
    ClassificationAccumulator,
    RegressionAccumulator,
    classification_scores,
    regression_scores,
)


def _probabilities(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    return rng.dirichlet(np.full(k, 0.7), size=n)


def _check_against_sklearn(
    labels: list[Any], probabilities: np.ndarray, classes: list[Any], result: dict[str, Any]
) -> None:
    predicted = [classes[i] for i in probabilities.argmax(axis=1)]
    assert result["task"] == "classification"
    assert result["rows"] == len(labels)
    assert result["accuracy"] == pytest.approx(accuracy_score(labels, predicted), abs=1e-12)
    for average in ("macro", "weighted"):
        expected = f1_score(labels, predicted, average=average, zero_division=0)
        assert result[f"f1_{average}"] == pytest.approx(expected, abs=1e-12)

    order = result["confusion_matrix"]["labels"]
    extras = sorted({label for label in labels if label not in classes}, key=str)
    assert order == [*classes, *extras]
    expected_matrix = confusion_matrix(labels, predicted, labels=order)
    assert result["confusion_matrix"]["matrix"] == expected_matrix.tolist()
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predicted, labels=order, zero_division=0
    )
    assert [row["label"] for row in result["per_class"]] == order
    assert [row["support"] for row in result["per_class"]] == support.tolist()
    for name, expected in (("precision", precision), ("recall", recall), ("f1", f1)):
        assert [row[name] for row in result["per_class"]] == pytest.approx(expected, abs=1e-12)

    known = [i for i, label in enumerate(labels) if label in classes]
    assert result["unknown_label_rows"] == len(labels) - len(known)
    # scikit-learn reads probability columns in sorted label order.
    columns = sorted(range(len(classes)), key=lambda i: classes[i])
    expected_loss = log_loss(
        [labels[i] for i in known],
        probabilities[known][:, columns],
        labels=sorted(classes),
    )
    assert result["log_loss"] == pytest.approx(expected_loss, rel=1e-9)
    # Brier: an unknown label's one-hot is all zeros.
    onehot = np.array([[label == c for c in classes] for label in labels], dtype=float)
    expected_brier = ((probabilities - onehot) ** 2).sum(axis=1).mean()
    assert result["brier"] == pytest.approx(expected_brier, rel=1e-9)
    json.dumps(result, allow_nan=False)


def test_binary_matches_sklearn() -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, size=400).tolist()
    probabilities = _probabilities(rng, 400, 2)
    result = classification_scores(labels, probabilities, [0, 1])
    _check_against_sklearn(labels, probabilities, [0, 1], result)
    assert result["unknown_label_rows"] == 0


def test_multiclass_matches_sklearn() -> None:
    rng = np.random.default_rng(1)
    classes = [3, 1, 4, 0, 2]
    # Class 2 is never a true label, so macro F1 must still count it only where predicted.
    labels = rng.choice([3, 1, 4, 0], size=700).tolist()
    probabilities = _probabilities(rng, 700, 5)
    _check_against_sklearn(
        labels, probabilities, classes, classification_scores(labels, probabilities, classes)
    )


def test_string_labels_match_sklearn() -> None:
    rng = np.random.default_rng(2)
    classes = ["setosa", "versicolor", "virginica"]
    labels = rng.choice(classes, size=300).tolist()
    probabilities = _probabilities(rng, 300, 3)
    _check_against_sklearn(
        labels, probabilities, classes, classification_scores(labels, probabilities, classes)
    )
    # A NumPy string array scores the same as the list of str.
    as_array = classification_scores(np.array(labels), probabilities, classes)
    assert as_array == classification_scores(labels, probabilities, classes)


def test_int_labels_given_as_floats_or_numpy_scalars() -> None:
    rng = np.random.default_rng(3)
    ints = rng.integers(0, 3, size=250)
    probabilities = _probabilities(rng, 250, 3)
    expected = classification_scores(ints.tolist(), probabilities, [0, 1, 2])
    _check_against_sklearn(ints.tolist(), probabilities, [0, 1, 2], expected)
    for labels in (
        ints.astype(float).tolist(),
        ints.astype(np.float64),
        ints.astype(np.int64),
        list(ints),  # NumPy scalars
    ):
        assert classification_scores(labels, probabilities, [0, 1, 2]) == expected
    # Classes given as NumPy ints are reported as plain ints.
    result = classification_scores(ints.astype(float), probabilities, np.array([0, 1, 2]))
    assert result == expected
    assert all(type(label) is int for label in result["confusion_matrix"]["labels"])


def test_labels_not_among_classes() -> None:
    rng = np.random.default_rng(4)
    classes = ["a", "b", "c"]
    labels = rng.choice(["a", "b", "c", "z", "d"], size=500).tolist()
    probabilities = _probabilities(rng, 500, 3)
    result = classification_scores(labels, probabilities, classes)
    _check_against_sklearn(labels, probabilities, classes, result)
    assert result["confusion_matrix"]["labels"] == ["a", "b", "c", "d", "z"]
    assert result["unknown_label_rows"] == labels.count("z") + labels.count("d")
    # Nothing is ever predicted as an unknown label.
    matrix = np.array(result["confusion_matrix"]["matrix"])
    assert matrix[:, 3:].sum() == 0


def test_only_unknown_labels_give_no_log_loss() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    result = classification_scores(["x", "y"], probabilities, ["a", "b"])
    assert result["log_loss"] is None
    assert result["accuracy"] == 0.0
    assert result["unknown_label_rows"] == 2
    assert result["brier"] == pytest.approx((0.81 + 0.01 + 0.04 + 0.64) / 2)
    json.dumps(result, allow_nan=False)


def test_missing_labels_are_reported_as_none() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]])
    result = classification_scores([0, float("nan"), np.nan], probabilities, [0, 1])
    assert result["confusion_matrix"]["labels"] == [0, 1, None]
    assert result["unknown_label_rows"] == 2
    json.dumps(result, allow_nan=False)


def test_log_loss_clips_probabilities() -> None:
    result = classification_scores([1], np.array([[1.0, 0.0]]), [0, 1])
    assert result["log_loss"] == pytest.approx(-math.log(1e-15))


def test_calibration_bins_and_ece() -> None:
    rng = np.random.default_rng(5)
    classes = ["a", "b", "c", "d"]
    labels = rng.choice([*classes, "e"], size=900).tolist()
    probabilities = _probabilities(rng, 900, 4)
    # Confidences exactly on bin edges fall in the lower bin: bins are (lower, upper].
    probabilities[:4] = [[0.5, 0.5, 0, 0], [0.7, 0.3, 0, 0], [1, 0, 0, 0], [0.25] * 4]
    bins = 7
    result = classification_scores(labels, probabilities, classes, bins=bins)
    calibration = result["calibration"]
    assert len(calibration["bins"]) == bins
    assert sum(b["count"] for b in calibration["bins"]) == 900
    assert calibration["bins"][0]["lower"] == 0.0
    assert calibration["bins"][-1]["upper"] == 1.0

    confidence = probabilities.max(axis=1)
    correct = np.array(
        [classes[i] == label for i, label in zip(probabilities.argmax(axis=1), labels, strict=True)]
    )
    ece = 0.0
    for b, reported in enumerate(calibration["bins"]):
        lower, upper = b / bins, (b + 1) / bins
        members = (confidence > lower) & (confidence <= upper)
        if b == 0:
            members |= confidence == 0
        assert reported["count"] == members.sum()
        if members.any():
            assert reported["mean_confidence"] == pytest.approx(confidence[members].mean())
            assert reported["accuracy"] == pytest.approx(correct[members].mean())
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
        else:
            assert reported["mean_confidence"] is None and reported["accuracy"] is None
    assert calibration["expected_calibration_error"] == pytest.approx(ece, rel=1e-9)


def test_empty_calibration_bins_are_listed() -> None:
    result = classification_scores([0, 1], np.array([[0.95, 0.05], [0.05, 0.95]]), [0, 1])
    bins = result["calibration"]["bins"]
    assert [b["count"] for b in bins] == [0] * 9 + [2]
    assert bins[0] == {
        "lower": 0.0,
        "upper": 0.1,
        "count": 0,
        "mean_confidence": None,
        "accuracy": None,
    }
    assert result["calibration"]["expected_calibration_error"] == pytest.approx(0.05)


def _assert_close(actual: Any, expected: Any) -> None:
    """Equal structure, with floats equal to 1e-9."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and actual.keys() == expected.keys()
        for key in expected:
            _assert_close(actual[key], expected[key])
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _assert_close(a, e)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=1e-9, abs=1e-9)
    else:
        assert type(actual) is type(expected) and actual == expected


def _uneven_chunks(n: int, seed: int) -> list[tuple[int, int]]:
    cuts = np.sort(np.random.default_rng(seed).choice(np.arange(1, n), size=6, replace=False))
    edges = [0, *cuts.tolist(), n]
    return list(itertools.pairwise(edges))


def test_chunked_classification_equals_one_shot() -> None:
    rng = np.random.default_rng(6)
    classes = ["a", "b", "c"]
    n = 1000
    labels = rng.choice(classes, size=n).astype(object)
    # Unknown labels first appear in late chunks, out of their sorted order.
    labels[[950, 960]] = "zz"
    labels[[970, 20]] = "d"
    labels = labels.tolist()
    probabilities = _probabilities(rng, n, 3)
    one_shot = classification_scores(labels, probabilities, classes, bins=12)

    chunks = _uneven_chunks(n, seed=7)
    assert len(chunks) == 7
    accumulator = ClassificationAccumulator(classes, bins=12)
    for start, stop in chunks:
        accumulator.add(labels[start:stop], probabilities[start:stop])
    accumulator.add([], np.empty((0, 3)))  # an empty chunk changes nothing
    _assert_close(accumulator.result(), one_shot)
    assert one_shot["confusion_matrix"]["labels"] == ["a", "b", "c", "d", "zz"]


def test_regression_matches_sklearn() -> None:
    rng = np.random.default_rng(8)
    targets = rng.normal(10, 3, size=600)
    predictions = targets + rng.normal(0.5, 1, size=600)
    result = regression_scores(targets.tolist(), predictions)
    assert result["task"] == "regression"
    assert result["rows"] == 600
    assert result["r2"] == pytest.approx(r2_score(targets, predictions), rel=1e-9)
    rmse = math.sqrt(mean_squared_error(targets, predictions))
    assert result["rmse"] == pytest.approx(rmse, rel=1e-9)
    assert result["mae"] == pytest.approx(mean_absolute_error(targets, predictions), rel=1e-9)
    assert result["mean_error"] == pytest.approx((predictions - targets).mean(), rel=1e-9)
    # A (n, 1) prediction column is accepted.
    assert regression_scores(targets, predictions[:, None]) == result
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize("offset", [0.0, 1e9])
def test_chunked_regression_equals_one_shot(offset: float) -> None:
    rng = np.random.default_rng(9)
    n = 1000
    targets = offset + rng.normal(0, 2, size=n)
    predictions = targets + rng.normal(0, 1, size=n)
    one_shot = regression_scores(targets, predictions)
    accumulator = RegressionAccumulator()
    for start, stop in _uneven_chunks(n, seed=10):
        accumulator.add(targets[start:stop], predictions[start:stop])
    _assert_close(accumulator.result(), one_shot)
    # Large offsets must not cost the R² its precision.
    assert one_shot["r2"] == pytest.approx(r2_score(targets, predictions), rel=1e-6)


def test_constant_targets_have_no_r2() -> None:
    result = regression_scores([0.1] * 9, np.linspace(0, 1, 9))
    assert result["r2"] is None
    json.dumps(result, allow_nan=False)
    accumulator = RegressionAccumulator()
    for _ in range(7):
        accumulator.add([0.1, 0.1, 0.1], np.array([0.2, 0.0, 0.1]))
    assert accumulator.result()["r2"] is None
    assert regression_scores([5.0], np.array([4.0]))["r2"] is None


def test_overflow_is_reported_as_none() -> None:
    with np.errstate(over="ignore"):
        result = regression_scores([1e200, -1e200], np.array([-1e200, 1e200]))
    assert result["rmse"] is None and result["r2"] is None
    json.dumps(result, allow_nan=False)


@pytest.mark.parametrize(
    ("labels", "probabilities", "classes", "message"),
    [
        ([0, 1, 0], np.full((2, 2), 0.5), [0, 1], "3 labels but 2 rows"),
        ([0, 1], np.full((2, 3), 1 / 3), [0, 1], r"shape \(n, 2\)"),
        ([0, 1], np.array([0.5, 0.5]), [0, 1], r"shape \(n, 2\)"),
        ([], np.empty((0, 2)), [0, 1], "no rows"),
        ([0, 1], np.full((2, 0), 0.5), [], "classes must not be empty"),
        ([0, 1], np.full((2, 2), 0.5), [1, 1.0], "duplicates"),
        ([0, 1], np.array([[0.5, 0.5], [np.nan, 0.5]]), [0, 1], "row 1"),
    ],
)
def test_classification_rejects_bad_input(
    labels: list[Any], probabilities: np.ndarray, classes: list[Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classification_scores(labels, probabilities, classes)


def test_classification_rejects_bad_bins() -> None:
    with pytest.raises(ValueError, match="bins"):
        classification_scores([0], np.array([[1.0, 0.0]]), [0, 1], bins=0)


@pytest.mark.parametrize(
    ("targets", "predictions", "message"),
    [
        ([1.0, 2.0], np.array([1.0]), "must be n values each"),
        ([], np.array([]), "no rows"),
        ([1.0, float("nan"), float("inf")], np.zeros(3), "target in row 1"),
        ([1.0, None, 2.0], np.zeros(3), "target in row 1"),
        ([1.0, 2.0], np.array([0.0, np.inf]), "prediction in row 1"),
        ([1.0, 2.0], np.zeros((2, 2)), "must be n values each"),
    ],
)
def test_regression_rejects_bad_input(
    targets: list[Any], predictions: np.ndarray, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        regression_scores(targets, predictions)


def test_bad_target_row_counts_across_chunks() -> None:
    accumulator = RegressionAccumulator()
    accumulator.add([1.0, 2.0, 3.0], np.zeros(3))
    with pytest.raises(ValueError, match="target in row 4"):
        accumulator.add([1.0, float("nan")], np.zeros(2))
