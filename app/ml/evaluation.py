"""Scores for evaluating a model version on a labelled dataset, computable chunk by chunk.

An evaluation job streams a dataset through a model; the accumulators keep only running sums,
so memory stays bounded however many rows pass, and `classification_scores` and
`regression_scores` are one-chunk uses of them, so both ways share one code path. Results are
JSON-safe: plain Python values, None where a score is undefined, never NaN or infinity.
NumPy only: importing sklearn.metrics costs seconds at worker start.
"""

import math
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np

# Labels or classes: any sequence of hashables (str, int, bool, ...), or a NumPy array.
Labels = Sequence[Any] | np.ndarray

# Log loss clips like scikit-learn used to, so one confident miss costs ~34.5, not infinity.
_LOG_LOSS_EPS = 1e-15


def _normalise(value: Any, int_classes: bool) -> Hashable:
    """A label as a plain Python value, so 1, np.int64(1) and 1.0 find the same class."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if not math.isfinite(value):
            # One key for every missing label (NaN != NaN), and JSON has no NaN to report.
            return None
        if int_classes and value.is_integer():
            return int(value)
    return value


def _check_finite(values: np.ndarray, what: str, offset: int) -> None:
    bad = ~np.isfinite(values)
    bad = bad.any(axis=1) if bad.ndim > 1 else bad
    if bad.any():
        raise ValueError(f"{what} in row {offset + int(np.argmax(bad))} is not a finite number")


def _finite(value: float) -> float | None:
    # Overflow (e.g. squaring 1e200) would otherwise put an infinity into the JSON.
    return float(value) if math.isfinite(value) else None


def _ratio(numerator: float, denominator: int) -> float | None:
    return _finite(numerator / denominator) if denominator else None


class ClassificationAccumulator:
    """Running sums for `classification_scores`, fed one chunk of rows at a time."""

    def __init__(self, classes: Labels, bins: int = 10) -> None:
        if len(classes) == 0:
            raise ValueError("classes must not be empty")
        if not isinstance(bins, int) or bins < 1:
            raise ValueError(f"bins must be a positive integer, got {bins!r}")
        plain = [c.item() if isinstance(c, np.generic) else c for c in classes]
        self._int_classes = all(isinstance(c, int) and not isinstance(c, bool) for c in plain)
        self.classes = [_normalise(c, self._int_classes) for c in plain]
        self._index: dict[Hashable, int] = {c: i for i, c in enumerate(self.classes)}
        if len(self._index) != len(self.classes):
            raise ValueError(f"classes contain duplicates: {self.classes!r}")
        self.bins = bins
        k = len(self.classes)
        # True labels outside `classes` get rows after the k known ones, in order of first
        # sight; predictions are always among `classes`, so k columns suffice until result().
        self._extras: dict[Hashable, int] = {}
        self._confusion = np.zeros((k, k), dtype=np.int64)
        self._rows = 0
        self._known_rows = 0
        self._log_loss_sum = 0.0
        self._brier_sum = 0.0
        self._bin_count = np.zeros(bins, dtype=np.int64)
        self._bin_confidence = np.zeros(bins)
        self._bin_correct = np.zeros(bins)

    def _code(self, label: Any) -> int:
        key = _normalise(label, self._int_classes)
        code = self._index.get(key)
        if code is None:
            code = self._extras.get(key)
        if code is None:
            code = self._extras[key] = len(self.classes) + len(self._extras)
            row = np.zeros((1, len(self.classes)), dtype=np.int64)
            self._confusion = np.vstack([self._confusion, row])
        return code

    def _codes(self, labels: Labels) -> np.ndarray:
        if isinstance(labels, np.ndarray) and labels.dtype.kind in "biufUS":
            # Millions of rows hold few distinct labels: normalise each distinct one once.
            unique, inverse = np.unique(labels, return_inverse=True)
            codes = np.array([self._code(v) for v in unique], dtype=np.int64)
            return codes[inverse.reshape(-1)]
        return np.fromiter((self._code(v) for v in labels), dtype=np.int64, count=len(labels))

    def add(self, labels: Labels, probabilities: np.ndarray) -> None:
        """Fold in one chunk: n labels and their (n, k) class probabilities."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        k = len(self.classes)
        if probabilities.ndim != 2 or probabilities.shape[1] != k:
            raise ValueError(
                f"probabilities must have shape (n, {k}) for {k} classes, got {probabilities.shape}"
            )
        if isinstance(labels, np.ndarray) and labels.ndim != 1:
            raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
        n = probabilities.shape[0]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} labels but {n} rows of probabilities")
        _check_finite(probabilities, "probabilities", self._rows)
        codes = self._codes(labels)
        predicted = probabilities.argmax(axis=1)
        self._confusion += np.bincount(
            codes * k + predicted, minlength=self._confusion.size
        ).reshape(self._confusion.shape)

        known = codes < k
        p_true = probabilities[known, codes[known]]
        self._known_rows += int(known.sum())
        self._log_loss_sum += float(-np.log(np.clip(p_true, _LOG_LOSS_EPS, 1.0)).sum())
        # sum_k (p_k - y_k)^2 = sum_k p_k^2 - 2 p_true + 1 for a known label; an unknown label
        # has an all-zero one-hot, leaving sum_k p_k^2.
        self._brier_sum += float((probabilities**2).sum() + (1.0 - 2.0 * p_true).sum())

        confidence = probabilities.max(axis=1)
        edges = np.arange(1, self.bins) / self.bins
        # Bins are (lower, upper], the first also taking confidence 0.
        bin_of = np.searchsorted(edges, confidence, side="left")
        self._bin_count += np.bincount(bin_of, minlength=self.bins)
        self._bin_confidence += np.bincount(bin_of, weights=confidence, minlength=self.bins)
        correct = predicted == codes
        self._bin_correct += np.bincount(bin_of, weights=correct, minlength=self.bins)
        self._rows += n

    def result(self) -> dict[str, Any]:
        """The scores over every row added so far; see `classification_scores`."""
        if self._rows == 0:
            raise ValueError("no rows to score")
        k = len(self.classes)
        extras = sorted(self._extras, key=lambda label: (str(label), type(label).__name__))
        labels = [*self.classes, *extras]
        order = [*range(k), *(self._extras[label] for label in extras)]
        matrix = np.zeros((len(labels), len(labels)), dtype=np.int64)
        matrix[:, :k] = self._confusion[order]

        tp = np.diag(matrix).astype(np.float64)
        support = matrix.sum(axis=1).astype(np.float64)
        predicted = matrix.sum(axis=0).astype(np.float64)
        # zero_division=0, as scikit-learn: an undefined precision, recall or F1 counts as 0.
        precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
        recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
        denominator = support + predicted
        f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
        # Macro F1 averages over labels that occur as truth or prediction, as scikit-learn does.
        present = denominator > 0

        bins = [
            {
                "lower": b / self.bins,
                "upper": (b + 1) / self.bins,
                "count": count,
                "mean_confidence": _ratio(self._bin_confidence[b], count),
                "accuracy": _ratio(self._bin_correct[b], count),
            }
            for b, count in enumerate(self._bin_count.tolist())
        ]
        gap = np.abs(self._bin_correct - self._bin_confidence).sum()
        return {
            "task": "classification",
            "rows": self._rows,
            "accuracy": float(tp.sum() / self._rows),
            "f1_macro": float(f1[present].mean()),
            "f1_weighted": float((f1 * support).sum() / support.sum()),
            "log_loss": _ratio(self._log_loss_sum, self._known_rows),
            "brier": _ratio(self._brier_sum, self._rows),
            "unknown_label_rows": self._rows - self._known_rows,
            "calibration": {"expected_calibration_error": _ratio(gap, self._rows), "bins": bins},
            "confusion_matrix": {"labels": labels, "matrix": matrix.tolist()},
            "per_class": [
                dict(label=label, precision=pr, recall=rc, f1=f, support=int(s))
                for label, pr, rc, f, s in zip(
                    labels, precision.tolist(), recall.tolist(), f1.tolist(), support, strict=True
                )
            ],
        }


class RegressionAccumulator:
    """Running sums for `regression_scores`, fed one chunk of rows at a time."""

    def __init__(self) -> None:
        self._rows = 0
        # The targets' mean and sum of squared deviations, merged per chunk with Chan's update:
        # sum-of-squares minus squared-sum would cancel catastrophically for large targets.
        self._mean = 0.0
        self._m2 = 0.0
        self._min = math.inf
        self._max = -math.inf
        self._squared_error = 0.0
        self._absolute_error = 0.0
        self._error = 0.0

    def add(self, targets: Sequence[float] | np.ndarray, predictions: np.ndarray) -> None:
        """Fold in one chunk: n targets and n predictions (shape (n,) or (n, 1))."""
        y = np.asarray(targets, dtype=np.float64)
        p = np.asarray(predictions, dtype=np.float64)
        if p.ndim == 2 and p.shape[1] == 1:
            p = p[:, 0]
        if y.ndim != 1 or p.ndim != 1 or len(y) != len(p):
            raise ValueError(f"targets {y.shape} and predictions {p.shape} must be n values each")
        _check_finite(y, "target", self._rows)
        _check_finite(p, "prediction", self._rows)
        n = len(y)
        if n == 0:
            return
        chunk_mean = float(y.mean())
        chunk_m2 = float(((y - chunk_mean) ** 2).sum())
        total = self._rows + n
        delta = chunk_mean - self._mean
        self._mean += delta * n / total
        self._m2 += chunk_m2 + delta * delta * self._rows * n / total
        self._min = min(self._min, float(y.min()))
        self._max = max(self._max, float(y.max()))
        error = p - y
        self._squared_error += float((error**2).sum())
        self._absolute_error += float(np.abs(error).sum())
        self._error += float(error.sum())
        self._rows = total

    def result(self) -> dict[str, Any]:
        """The scores over every row added so far; see `regression_scores`."""
        if self._rows == 0:
            raise ValueError("no rows to score")
        # Constant targets are detected exactly: their M2 may come out as rounding noise.
        constant = self._min == self._max
        return {
            "task": "regression",
            "rows": self._rows,
            "r2": None if constant else _finite(1.0 - self._squared_error / self._m2),
            "rmse": _finite(math.sqrt(self._squared_error / self._rows)),
            "mae": _ratio(self._absolute_error, self._rows),
            "mean_error": _ratio(self._error, self._rows),
        }


def classification_scores(
    labels: Labels, probabilities: np.ndarray, classes: Labels, *, bins: int = 10
) -> dict[str, Any]:
    """Accuracy, F1, log loss, Brier, calibration and confusion of class probabilities.

    `probabilities` is (n, k) in `classes` order; the prediction is the most probable class.
    Log loss covers only rows whose label is among `classes` (None if none is); Brier covers
    every row, a label outside `classes` having an all-zero one-hot. Confusion and per-class
    entries list `classes` first, then the unknown true labels sorted by their text.
    """
    accumulator = ClassificationAccumulator(classes, bins=bins)
    accumulator.add(labels, probabilities)
    return accumulator.result()


def regression_scores(
    targets: Sequence[float] | np.ndarray, predictions: np.ndarray
) -> dict[str, Any]:
    """R² (None for constant targets), RMSE, MAE and mean error (prediction minus target)."""
    accumulator = RegressionAccumulator()
    accumulator.add(targets, predictions)
    return accumulator.result()
