"""`joint`: one model on the source rows and the target rows together, from the source weights."""

import math

import numpy as np
from torch import nn

from app.ml.errors import DataError
from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def rows(run: Run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The source rows then the run's target rows, and each row's loss weight."""
    data = run.data
    if data.source_x is None or data.source_y is None:
        raise DataError("strategy joint needs the source dataset's rows", code="source_unavailable")
    x_train, y_train = run.x_train, run.y_train
    n_source, n_target = len(data.source_x), len(x_train)
    weight = run.settings.joint_target_weight
    if weight is None:
        # Both sets then weigh the same in the loss, however few target rows there are.
        weight = max(1.0, n_source / max(n_target, 1))
    x = np.concatenate([data.source_x.astype(np.float32), x_train.astype(np.float32)])
    y = np.concatenate([data.source_y.astype(data.y.dtype), y_train])
    weights = np.concatenate([np.ones(n_source), np.full(n_target, weight)]).astype(np.float32)
    return x, y, weights


def prepare(run: Run) -> nn.Module:
    return run.source_model()


def train(run: Run, model: nn.Module) -> Trained:
    x, y, weights = rows(run)
    n_target = len(run.train_idx)
    # Batches grow with the data so that joint takes as many optimiser steps per epoch as the
    # target-only strategies: the same budget, and a cost that does not scale with the
    # source's size.
    batch_size = run.settings.batch_size * math.ceil(len(weights) / max(n_target, 1))
    run.notes.append(
        f"joint: {len(weights) - n_target} source rows and {n_target} target rows, a target "
        f"row weighing {float(weights[-1]):.3g}, batches of {batch_size}"
    )
    return run.fit(model, x_train=x, y_train=y, sample_weight=weights, batch_size=batch_size)


SPEC = register(
    StrategySpec(
        name="joint",
        description="one model on the source rows (the base version's training dataset) and "
        "the target rows together, from the source weights, target rows weighted up.",
        uses_source_weights=True,
        trains="every weight, on source and target rows",
        prepare=prepare,
        train=train,
        needs_source_rows=True,
        simplicity=70,
        hyperparameters=("joint_target_weight",),
    )
)
