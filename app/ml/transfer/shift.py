"""How far the target's inputs are from the source's: the transfer report's `domain_shift`."""

from typing import Any

import numpy as np

from app.ml import features


def domain_shift(
    spec: dict[str, Any], x_target: np.ndarray, x_source: np.ndarray | None, seed: int = 0
) -> dict[str, Any]:
    """Per-feature standardised mean difference, and a classifier two-sample test AUC.

    Both arrays are encoded with the source's preprocessing. Without source rows the source
    side is taken from the preprocessing itself (mean 0, std 1 on the encoded scale) and the
    two-sample test is skipped.
    """
    names, target = features.shift_features(spec, x_target)
    if x_source is not None:
        _, source = features.shift_features(spec, x_source)
        source_mean, source_var = source.mean(axis=0), source.var(axis=0)
    else:
        source_mean, source_var = np.zeros(len(names)), np.ones(len(names))
    pooled = np.sqrt((source_var + target.var(axis=0)) / 2)
    smd = (target.mean(axis=0) - source_mean) / np.where(pooled > 0, pooled, 1.0)
    per_feature = {name: round(float(value), 4) for name, value in zip(names, smd, strict=True)}
    summary: dict[str, Any] = {
        "standardised_mean_difference": per_feature,
        "mean_abs_smd": float(np.abs(smd).mean()) if len(smd) else 0.0,
        "max_abs_smd": float(np.abs(smd).max()) if len(smd) else 0.0,
        "classifier_auc": None,
    }
    if x_source is not None:
        summary["classifier_auc"] = _two_sample_auc(x_source, x_target, seed)
    else:
        summary["note"] = "the source rows are unavailable; shift measured against its scaling"
    return summary


def _two_sample_auc(x_source: np.ndarray, x_target: np.ndarray, seed: int) -> float | None:
    """Cross-validated AUC of a logistic regression telling target rows from source rows.

    0.5: the two are indistinguishable; 1.0: every row gives its domain away.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    rng = np.random.default_rng(seed)
    cap = 2000  # rows per domain; enough for a stable AUC, cheap on any dataset
    source = np.asarray(x_source, dtype=np.float64).reshape(len(x_source), -1)
    target = np.asarray(x_target, dtype=np.float64).reshape(len(x_target), -1)
    if len(source) > cap:
        source = source[rng.choice(len(source), cap, replace=False)]
    if len(target) > cap:
        target = target[rng.choice(len(target), cap, replace=False)]
    if min(len(source), len(target)) < 3:
        return None
    x = np.concatenate([source, target])
    domain = np.concatenate([np.zeros(len(source)), np.ones(len(target))])
    folds = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    scores = cross_val_predict(
        LogisticRegression(max_iter=500), x, domain, cv=folds, method="predict_proba"
    )[:, 1]
    return float(roc_auc_score(domain, scores))
