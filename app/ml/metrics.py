"""Evaluation metrics, reported on the target's original scale."""

from typing import Any

import numpy as np

from app.ml.tabular import decode_regression


def classification_metrics(
    loss: float, y_true: np.ndarray, probabilities: np.ndarray
) -> dict[str, Any]:
    """Loss, accuracy and macro F1 from class indices and predicted probabilities."""
    predicted = probabilities.argmax(axis=1)
    return {
        "loss": loss,
        "accuracy": accuracy(y_true, predicted),
        "f1_macro": f1_macro(y_true, predicted),
    }


def regression_metrics(
    loss: float, target_spec: dict[str, Any], y_true: np.ndarray, y_pred: np.ndarray
) -> dict[str, Any]:
    """Loss (standardised scale) plus R², MAE and RMSE on the original scale."""
    true = decode_regression(target_spec, y_true)
    pred = decode_regression(target_spec, y_pred)
    error = pred - true
    return {
        "loss": loss,
        "r2": r2(true, pred),
        "mae": float(np.abs(error).mean()),
        "rmse": float(np.sqrt((error**2).mean())),
    }


def accuracy(y_true: np.ndarray, predicted: np.ndarray) -> float:
    """Fraction of rows whose predicted class is the true one."""
    return float((np.asarray(y_true) == np.asarray(predicted)).mean())


def f1_macro(y_true: np.ndarray, predicted: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur in either array, as scikit-learn does."""
    # Written out with NumPy because importing sklearn.metrics costs seconds at worker start.
    labels = np.union1d(y_true, predicted)
    if labels.size == 0:
        return 0.0
    true_hit = np.asarray(y_true)[:, None] == labels
    pred_hit = np.asarray(predicted)[:, None] == labels
    tp = (true_hit & pred_hit).sum(axis=0)
    denominator = true_hit.sum(axis=0) + pred_hit.sum(axis=0)
    return float(np.mean(np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)))


def r2(y_true: np.ndarray, y_pred: np.ndarray) -> float | None:
    """Coefficient of determination; None when it is undefined (fewer than 2 rows)."""
    if len(y_true) < 2:
        return None
    residual = float(((y_true - y_pred) ** 2).sum())
    total = float(((y_true - y_true.mean()) ** 2).sum())
    if total == 0.0:
        # A constant target: as scikit-learn does, perfect fits score 1 and anything else 0,
        # instead of dividing by zero.
        return 1.0 if residual == 0.0 else 0.0
    return 1.0 - residual / total
