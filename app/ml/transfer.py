"""Training with every transfer strategy, cross-validated scoring, and the automatic choice.

Everything here works on encoded arrays: `x` of any trailing shape the model reads (rows x
features, rows x C x H x W), targets as `tabular.encode_target` gives them, and any model with
a `trunk` and a linear `head`.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml import features, strategies, training
from app.ml.errors import DataError
from app.ml.linear import fit_linear

NORMALIZATIONS = ("source", "target")
# Ordered from simplest to most involved: equal scores go to the earlier one.
SIMPLICITY = (
    "linear",
    "scratch",
    "structure",
    "feature",
    "parameter",
    "lp_ft",
    "l2_sp",
    "joint",
)
TARGET_ONLY = frozenset({"linear", "scratch", "structure"})
# `structure` is `scratch` under another name (same architecture, fresh weights), so auto
# scores it once.
AUTO_STRATEGIES = ("feature", "parameter", "lp_ft", "l2_sp", "joint", "scratch", "linear")
LAYER_LR_STRATEGIES = frozenset({"parameter", "l2_sp"})
# A tie means the target rows cannot tell the candidates apart (with a dozen rows every fold
# scores 0, 1/3, 2/3 or 1). The source is then the only other evidence, and l2_sp uses it most
# cautiously: every weight adapts to the target, but is pulled towards the source model (the
# source as the prior's mean). On the quality benchmark's saturated tasks (wine, penguins) it
# beat the linear model that ties used to go to.
TIE_PREFERENCE = ("l2_sp",)
SELECTION_RULE = (
    "highest mean cross-validated score; ties go to l2_sp, then to the simpler candidate "
    f"(order: {', '.join(SIMPLICITY)}; source normalisation before target)"
)


@dataclass(frozen=True)
class Candidate:
    """One way to build the fine-tuned model: a strategy and the input scaling it reads."""

    strategy: str
    normalization: str

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.normalization}"

    @property
    def uses_source(self) -> bool:
        return self.strategy not in TARGET_ONLY


@dataclass(frozen=True)
class Settings:
    """The training budget and the strategy-specific knobs, with their defaults."""

    epochs: int = 100
    batch_size: int = 32
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    seed: int = 0
    early_stopping_patience: int | None = None
    # lp_ft: share of the epochs spent on the linear probe, and the fine-tuning LR factor.
    lp_epochs_fraction: float = 0.5
    ft_lr_factor: float = 0.1
    # l2_sp: pull towards the source weights, and plain decay on new (head) weights.
    l2_sp_alpha: float = 0.01
    l2_sp_beta: float = 0.0
    # parameter and l2_sp: learning rate of the k-th layer below the head is lr * decay**k.
    layer_lr_decay: float = 1.0
    # joint: weight of a target row relative to a source row; None balances the two sets.
    joint_target_weight: float | None = None
    # linear: ridge alpha and logistic 1/C.
    linear_regularisation: float = 1.0

    @classmethod
    def from_hyperparameters(cls, hyper: dict[str, Any]) -> "Settings":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in hyper.items() if k in names and v is not None})


@dataclass
class TransferData:
    """The target rows under each normalisation, the source model and, if any, source rows."""

    target_spec: dict[str, Any]
    x: dict[str, np.ndarray]
    y: np.ndarray
    source_model: nn.Module | None
    architecture: dict[str, Any]
    keep_head: bool
    source_x: np.ndarray | None = None
    source_y: np.ndarray | None = None

    @property
    def task(self) -> str:
        return str(self.target_spec["task"])

    @property
    def output_dim(self) -> int:
        return len(self.target_spec["classes"]) if self.task == "classification" else 1


@dataclass
class Trained:
    model: nn.Module
    result: training.TrainResult
    notes: list[str] = field(default_factory=list)


def train_candidate(
    candidate: Candidate,
    data: TransferData,
    settings: Settings,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    *,
    on_epoch: Callable[[training.EpochMetrics], None] | None = None,
    on_batch: Callable[[], None] | None = None,
) -> Trained:
    """Build the candidate's model and train it on `train_idx`, validating on `val_idx`."""
    x = data.x[candidate.normalization]
    x_train, y_train = x[train_idx], data.y[train_idx]
    x_val, y_val = x[val_idx], data.y[val_idx]
    if candidate.strategy == "linear":
        return _train_linear(data, x_train, y_train, x_val, y_val, settings)
    if candidate.uses_source and data.source_model is None:
        raise ValueError(f"strategy {candidate.strategy!r} needs the source model")
    input_dim = int(data.architecture["input_dim"])
    model = strategies.prepare_model(
        candidate.strategy,
        data.source_model if data.source_model is not None else nn.Module(),
        data.architecture,
        input_dim,
        data.output_dim,
        keep_head=data.keep_head,
        seed=settings.seed,
    )
    notes = []
    if candidate.uses_source and candidate.normalization == "target":
        refitted = strategies.refit_batchnorm(model, x_train)
        if refitted:
            notes.append(f"batch-norm statistics of {refitted} layer(s) refitted on the target")
    fit_kwargs: dict[str, Any] = {
        "target_spec": data.target_spec,
        "batch_size": settings.batch_size,
        "weight_decay": settings.weight_decay,
        "optimizer": settings.optimizer,
        "early_stopping_patience": settings.early_stopping_patience,
        "seed": settings.seed,
        "on_epoch": on_epoch,
        "on_batch": on_batch,
    }
    lr = settings.learning_rate
    if candidate.strategy in LAYER_LR_STRATEGIES and settings.layer_lr_decay < 1.0:
        fit_kwargs["lr_scales"] = strategies.layer_lr_scales(model, settings.layer_lr_decay)
        notes.append(f"layer-wise learning rates: decay {settings.layer_lr_decay} per layer")
    if candidate.strategy == "l2_sp":
        assert data.source_model is not None
        reference = dict(data.source_model.state_dict())
        fit_kwargs["penalty"] = strategies.l2_sp_penalty(
            model, reference, alpha=settings.l2_sp_alpha, beta=settings.l2_sp_beta
        )
    if candidate.strategy == "joint":
        x_train, y_train, weights = _joint_rows(data, x_train, y_train, settings)
        fit_kwargs["sample_weight"] = weights
        # Batches grow with the data so that joint takes as many optimiser steps per epoch
        # as the target-only strategies: the same budget, and a cost that does not scale with
        # the source's size.
        growth = math.ceil(len(weights) / max(len(train_idx), 1))
        fit_kwargs["batch_size"] = settings.batch_size * growth
        notes.append(
            f"joint: {len(weights) - len(train_idx)} source rows and {len(train_idx)} target "
            f"rows, a target row weighing {float(weights[-1]):.3g}, batches of "
            f"{fit_kwargs['batch_size']}"
        )
    if candidate.strategy == "lp_ft":
        result = _lp_ft(model, x_train, y_train, x_val, y_val, settings, fit_kwargs)
    else:
        result = training.fit(
            model,
            x_train,
            y_train,
            x_val,
            y_val,
            epochs=settings.epochs,
            learning_rate=lr,
            **fit_kwargs,
        )
    return Trained(model, result, notes)


def _joint_rows(
    data: TransferData, x_train: np.ndarray, y_train: np.ndarray, settings: Settings
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if data.source_x is None or data.source_y is None:
        raise DataError("strategy joint needs the source dataset's rows", code="source_unavailable")
    n_source, n_target = len(data.source_x), len(x_train)
    weight = settings.joint_target_weight
    if weight is None:
        # Both sets then weigh the same in the loss, however few target rows there are.
        weight = max(1.0, n_source / max(n_target, 1))
    x = np.concatenate([data.source_x.astype(np.float32), x_train.astype(np.float32)])
    y = np.concatenate([data.source_y.astype(data.y.dtype), y_train])
    weights = np.concatenate([np.ones(n_source), np.full(n_target, weight)]).astype(np.float32)
    return x, y, weights


def _lp_ft(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: Settings,
    fit_kwargs: dict[str, Any],
) -> training.TrainResult:
    """Linear probe on the frozen trunk, then every weight at lr * ft_lr_factor.

    The probe starts from a converged logistic (ridge) regression on the trunk's features, as
    Kumar et al. fit theirs, so even a budget of a few optimiser steps has a fitted head to
    fine-tune from; its epochs then refine the head by gradient descent.
    """
    total = settings.epochs
    probe_epochs = max(1, round(total * settings.lp_epochs_fraction))
    if total >= 2:
        probe_epochs = min(probe_epochs, total - 1)
    finetune_epochs = total - probe_epochs
    on_epoch = fit_kwargs.pop("on_epoch")

    def relabel(offset: int) -> Callable[[training.EpochMetrics], None] | None:
        if on_epoch is None:
            return None

        def report(metrics: training.EpochMetrics) -> None:
            on_epoch(replace(metrics, epoch=metrics.epoch + offset, epochs=total))

        return report

    strategies.set_trunk_frozen(model, True)
    _fit_probe(model, x_train, y_train, fit_kwargs["target_spec"], settings)
    probe = training.fit(
        model,
        x_train,
        y_train,
        x_val,
        y_val,
        epochs=probe_epochs,
        learning_rate=settings.learning_rate,
        on_epoch=relabel(0),
        **fit_kwargs,
    )
    if finetune_epochs == 0:
        strategies.set_trunk_frozen(model, False)
        return probe
    strategies.set_trunk_frozen(model, False)
    tune = training.fit(
        model,
        x_train,
        y_train,
        x_val,
        y_val,
        epochs=finetune_epochs,
        learning_rate=settings.learning_rate * settings.ft_lr_factor,
        on_epoch=relabel(probe_epochs),
        **fit_kwargs,
    )
    history = probe.history + [
        {**entry, "epoch": entry["epoch"] + probe.epochs_run, "epochs": total}
        for entry in tune.history
    ]
    return training.TrainResult(
        epochs_run=probe.epochs_run + tune.epochs_run,
        best_epoch=probe.epochs_run + tune.best_epoch,
        stopped_early=tune.stopped_early,
        history=history,
        metrics=tune.metrics,
    )


def _fit_probe(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    target_spec: dict[str, Any],
    settings: Settings,
) -> None:
    trunk = getattr(model, "trunk", None)
    head = getattr(model, "head", None)
    if not isinstance(trunk, nn.Module) or not isinstance(head, nn.Linear) or not len(x_train):
        return
    model.eval()
    with torch.no_grad():
        feats = trunk(torch.as_tensor(np.asarray(x_train, dtype=np.float32))).reshape(
            len(x_train), -1
        )
    probe = fit_linear(
        feats.numpy(), y_train, target_spec, regularisation=settings.linear_regularisation
    )
    fitted = probe.head
    assert isinstance(fitted, nn.Linear)
    with torch.no_grad():
        head.weight.copy_(fitted.weight)
        head.bias.copy_(fitted.bias)


def _train_linear(
    data: TransferData,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    settings: Settings,
) -> Trained:
    if len(x_train) == 0:
        raise DataError("there are no rows to train on")
    model = fit_linear(
        x_train, y_train, data.target_spec, regularisation=settings.linear_regularisation
    )
    metrics = {
        "train": training.evaluate(model, x_train, y_train, data.target_spec),
        "validation": (
            training.evaluate(model, x_val, y_val, data.target_spec) if len(x_val) else None
        ),
    }
    result = training.TrainResult(0, 0, False, [], metrics)
    return Trained(model, result, ["linear model fitted by scikit-learn (no epochs)"])


# Cross-validation.


def fold_plan(n: int, requested_folds: int, repeats: int | None) -> tuple[int, int]:
    """(folds, repeats) for `n` rows: fewer rows get more repeats, so the estimate steadies."""
    folds = max(2, min(requested_folds, n // 2))
    if repeats is None:
        # Below 40 rows a test fold holds under ten rows and its accuracy moves in steps of
        # more than 0.1; on the quality benchmark five repeats there separated candidates
        # that three left tied or misordered.
        repeats = 5 if n < 40 else 3 if n < 60 else 2 if n < 200 else 1
    return folds, repeats


def fold_indices(
    y: np.ndarray, task: str, folds: int, repeats: int, seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) index pairs of stratified k-fold, repeated with fresh shuffles.

    Classification stratifies on the label, regression on quantile bins of the target; a
    class with fewer rows than folds lands in as many folds as it has rows.
    """
    n = len(y)
    if n < 4:
        raise DataError(
            f"cross-validation needs at least 4 target rows, got {n}", code="too_few_rows"
        )
    if task == "classification":
        strata = np.asarray(y)
    else:
        ranks = np.argsort(np.argsort(np.asarray(y, dtype=np.float64), kind="stable"))
        strata = ranks * folds // n
    splits = []
    for repeat in range(repeats):
        rng = np.random.default_rng([seed, repeat])
        assignment = np.empty(n, dtype=np.int64)
        offset = int(rng.integers(folds))
        for stratum in np.unique(strata):
            members = rng.permutation(np.flatnonzero(strata == stratum))
            # Continuing the fold counter across strata keeps fold sizes within one row.
            assignment[members] = (offset + np.arange(len(members))) % folds
            offset = (offset + len(members)) % folds
        for fold in range(folds):
            test = np.flatnonzero(assignment == fold)
            train = np.flatnonzero(assignment != fold)
            if len(test) and len(train):
                splits.append((train, test))
    return splits


@dataclass
class Score:
    candidate: Candidate
    scores: list[float]

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))

    @property
    def std(self) -> float:
        return float(np.std(self.scores))

    def as_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.name,
            "strategy": self.candidate.strategy,
            "target_normalization": self.candidate.normalization,
            "mean": self.mean,
            "std": self.std,
            "folds": len(self.scores),
        }


def score_name(task: str) -> str:
    return "accuracy" if task == "classification" else "r2"


def cross_validate(
    candidate: Candidate,
    data: TransferData,
    settings: Settings,
    splits: list[tuple[np.ndarray, np.ndarray]],
    *,
    check: Callable[[], None] | None = None,
) -> Score:
    """The candidate's held-out score on every split, trained with the full epoch budget.

    No early stopping inside a fold: every fold trains for `settings.epochs`, as the final
    model does, so the estimate is of what will be delivered.
    """
    metric = score_name(data.task)
    fold_settings = replace(settings, early_stopping_patience=None)
    empty = np.zeros(0, dtype=np.int64)
    scores = []
    for train_idx, test_idx in splits:
        if check is not None:
            check()
        trained = train_candidate(candidate, data, fold_settings, train_idx, empty)
        x_test = data.x[candidate.normalization][test_idx]
        result = training.evaluate(trained.model, x_test, data.y[test_idx], data.target_spec)
        value = result.get(metric)
        scores.append(float(value) if value is not None and math.isfinite(value) else 0.0)
    return Score(candidate, scores)


def auto_candidates(
    data: TransferData, normalizations: tuple[str, ...], *, joint_available: bool
) -> list[Candidate]:
    """Every strategy under every normalisation that changes it (target-only: the target's)."""
    found = []
    for strategy in AUTO_STRATEGIES:
        if strategy == "joint" and not joint_available:
            continue
        if strategy == "linear" and next(iter(data.x.values())).ndim != 2:
            continue  # the linear model reads rows x features
        if strategy in TARGET_ONLY:
            # Without source weights the target's own statistics are the natural scaling.
            norm = "target" if "target" in normalizations else normalizations[0]
            found.append(Candidate(strategy, norm))
        else:
            found.extend(Candidate(strategy, norm) for norm in normalizations)
    return found


def choose(scores: list[Score]) -> Score:
    """The best mean score; ties go to l2_sp, then to the simpler candidate."""
    if not scores:
        raise ValueError("no candidate was scored")
    tie_order = [*TIE_PREFERENCE, *(s for s in SIMPLICITY if s not in TIE_PREFERENCE)]

    def key(score: Score) -> tuple[float, int, int]:
        return (
            -round(score.mean, 9),
            tie_order.index(score.candidate.strategy),
            NORMALIZATIONS.index(score.candidate.normalization),
        )

    return min(scores, key=key)


# Domain shift.


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
