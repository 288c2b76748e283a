"""Target-only linear models from scikit-learn, expressed as a torch module for serving.

A logistic or ridge regression on the preprocessed inputs is exactly an MLP without hidden
layers, so a fitted one becomes `{"type": "mlp", "hidden_layers": []}` with its coefficients
as the head: serialisation and the predict path need nothing new.
"""

import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml.architectures import build_model

# The logit given to a class the training rows never showed: its probability is ~e^-30.
ABSENT_CLASS_LOGIT = -30.0
LINEAR_ARCHITECTURE: dict[str, Any] = {"type": "mlp", "hidden_layers": [], "activation": "relu"}


def fit_linear(
    x: np.ndarray, y: np.ndarray, target_spec: dict[str, Any], *, regularisation: float = 1.0
) -> nn.Module:
    """Logistic (classification) or ridge (regression, standardised targets) regression.

    `x` is rows x features; `regularisation` is ridge's alpha and logistic's 1/C.
    """
    x2 = np.asarray(x, dtype=np.float64)
    if x2.ndim != 2:
        raise ValueError(f"a linear model reads rows x features, got shape {x2.shape}")
    n_features = x2.shape[1]
    if target_spec["task"] == "regression":
        from sklearn.linear_model import Ridge

        ridge = Ridge(alpha=regularisation).fit(x2, np.asarray(y, dtype=np.float64))
        coef, intercept = np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_)
        return _as_module(n_features, 1, coef, intercept)
    n_classes = len(target_spec["classes"])
    labels = np.asarray(y, dtype=np.int64)
    present = np.unique(labels)
    weight = np.zeros((n_classes, n_features))
    bias = np.full(n_classes, ABSENT_CLASS_LOGIT)
    if len(present) == 1:
        # One class seen: predict it, whatever the input.
        bias[present[0]] = 0.0
        return _as_module(n_features, n_classes, weight, bias)
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    with warnings.catch_warnings():
        # Unscaled trunk features (lp_ft's probe) can need more iterations than the cap; the
        # fit is still the best within it, and gradient steps refine it afterwards.
        warnings.simplefilter("ignore", ConvergenceWarning)
        logistic = LogisticRegression(C=1.0 / regularisation, max_iter=1000).fit(x2, labels)
    seen = logistic.classes_.astype(np.int64)
    if len(seen) == 2:
        # Binary logistic regression keeps one logit; the softmax of (0, z) gives the same odds.
        weight[seen[1]] = logistic.coef_[0]
        bias[seen[0]], bias[seen[1]] = 0.0, float(logistic.intercept_[0])
    else:
        weight[seen] = logistic.coef_
        bias[seen] = logistic.intercept_
    return _as_module(n_features, n_classes, weight, bias)


def linear_architecture(input_dim: int, output_dim: int) -> dict[str, Any]:
    """The architecture dict a linear version is registered with."""
    return {**LINEAR_ARCHITECTURE, "input_dim": input_dim, "output_dim": output_dim}


def _as_module(n_features: int, n_outputs: int, weight: np.ndarray, bias: np.ndarray) -> nn.Module:
    model = build_model(LINEAR_ARCHITECTURE, n_features, n_outputs)
    head = model.head
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=torch.float32))
        head.bias.copy_(torch.as_tensor(bias, dtype=torch.float32))
    return model.eval()
