"""`lp_ft`: a linear probe on the frozen trunk, then every weight at a lower rate (Kumar et
al., 2022)."""

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from app.ml import training
from app.ml.linear import fit_linear
from app.ml.transfer import _models
from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def fit_probe(run: Run, model: nn.Module) -> None:
    """Set the head to a converged logistic (ridge) regression on the trunk's features."""
    head = _models.head_of(model)
    if not len(run.train_idx):
        return
    features = run.data.source_features(run.candidate.normalization)
    if features is None:
        features = _models.trunk_features(model, run.x_train)
    else:
        features = features[run.train_idx]
    probe = fit_linear(
        features,
        run.y_train,
        run.data.target_spec,
        regularisation=run.settings.linear_regularisation,
    )
    fitted = _models.head_of(probe)
    with torch.no_grad():
        head.weight.copy_(fitted.weight)
        head.bias.copy_(fitted.bias)


def prepare(run: Run) -> nn.Module:
    model = run.source_model()
    _models.set_trunk_frozen(model, True)  # the probe comes first
    return model


def train(run: Run, model: nn.Module) -> Trained:
    """The probe starts from a converged logistic (ridge) regression on the trunk's features,
    as Kumar et al. fit theirs, so even a budget of a few optimiser steps has a fitted head to
    fine-tune from; its epochs then refine the head by gradient descent."""
    s = run.settings
    total = s.epochs
    probe_epochs = max(1, round(total * s.lp_epochs_fraction))
    if total >= 2:
        probe_epochs = min(probe_epochs, total - 1)
    finetune_epochs = total - probe_epochs
    on_epoch = run.on_epoch

    def relabel(offset: int) -> Callable[[training.EpochMetrics], None] | None:
        if on_epoch is None:
            return None

        def report(metrics: training.EpochMetrics) -> None:
            on_epoch(replace(metrics, epoch=metrics.epoch + offset, epochs=total))

        return report

    _models.set_trunk_frozen(model, True)
    fit_probe(run, model)
    run.on_epoch = relabel(0)
    probe = run.fit_head_on_features(model, probe_epochs)
    _models.set_trunk_frozen(model, False)
    if finetune_epochs == 0:
        return Trained(model, probe, run.notes)
    run.on_epoch = relabel(probe_epochs)
    tune = run.fit(model, epochs=finetune_epochs, learning_rate=s.learning_rate * s.ft_lr_factor)
    history = probe.history + [
        {**entry, "epoch": entry["epoch"] + probe.epochs_run, "epochs": total}
        for entry in tune.result.history
    ]
    result = training.TrainResult(
        epochs_run=probe.epochs_run + tune.result.epochs_run,
        best_epoch=probe.epochs_run + tune.result.best_epoch,
        stopped_early=tune.result.stopped_early,
        history=history,
        metrics=tune.result.metrics,
    )
    return Trained(model, result, run.notes)


SPEC = register(
    StrategySpec(
        name="lp_ft",
        description="linear probe (a new head on the frozen trunk), then every weight at a "
        "lower learning rate (Kumar et al., 2022).",
        uses_source_weights=True,
        trains="the head, then every weight",
        prepare=prepare,
        train=train,
        simplicity=50,
        hyperparameters=("lp_epochs_fraction", "ft_lr_factor"),
    )
)
