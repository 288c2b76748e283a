"""A candidate (a strategy under one input scaling) and how it is trained on some target rows.

Everything here works on encoded arrays: `x` of any trailing shape the model reads (rows x
features, rows x C x H x W), targets as `tabular.encode_target` gives them, and any model with
a `trunk` and a linear `head`. What differs between strategies lives in their own modules;
`Run` is what a strategy's `train` receives: the rows, the budget and the shared steps.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from app.ml import architectures, training
from app.ml.errors import DataError
from app.ml.transfer import _models, registry


@dataclass(frozen=True)
class Candidate:
    """One way to build the fine-tuned model: a strategy and the input scaling it reads."""

    strategy: str
    normalization: str

    @property
    def name(self) -> str:
        return f"{self.strategy}/{self.normalization}"

    @property
    def spec(self) -> registry.StrategySpec:
        return registry.get(self.strategy)

    @property
    def uses_source(self) -> bool:
        return self.spec.uses_source_weights


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
    # Per normalisation, each encoded input's (mean, std) (`features.encoded_scaling`): what
    # lets `auto` blend candidates that read different scalings into one model. None where
    # the inputs have no such per-input scaling; blends then keep to one normalisation.
    scalings: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    # The frozen source trunk's output per normalisation, computed once for every candidate
    # and fold that reads it (see `source_features`).
    _features: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def task(self) -> str:
        return str(self.target_spec["task"])

    @property
    def output_dim(self) -> int:
        return len(self.target_spec["classes"]) if self.task == "classification" else 1

    @property
    def tabular(self) -> bool:
        return next(iter(self.x.values())).ndim == 2

    def source_features(self, normalization: str) -> np.ndarray | None:
        """The source trunk's features of every target row, or None where they depend on the
        fold (batch norm refitted on each fold's rows under the target's scaling)."""
        if self.source_model is None:
            return None
        if normalization == "target" and _models.batchnorm_layers(self.source_model):
            return None
        if normalization not in self._features:
            self._features[normalization] = _models.trunk_features(
                self.source_model, self.x[normalization]
            )
        return self._features[normalization]


@dataclass
class Trained:
    model: nn.Module
    result: training.TrainResult
    notes: list[str] = field(default_factory=list)
    # A target-only linear model replaces the architecture it is registered with.
    architecture: dict[str, Any] | None = None


@dataclass
class Run:
    """One training of one candidate: its rows, budget, callbacks and the shared steps."""

    candidate: Candidate
    data: TransferData
    settings: Settings
    train_idx: np.ndarray
    val_idx: np.ndarray
    on_epoch: Callable[[training.EpochMetrics], None] | None = None
    on_batch: Callable[[], None] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def x(self) -> np.ndarray:
        return self.data.x[self.candidate.normalization]

    @property
    def x_train(self) -> np.ndarray:
        return self.x[self.train_idx]

    @property
    def y_train(self) -> np.ndarray:
        return self.data.y[self.train_idx]

    @property
    def x_val(self) -> np.ndarray:
        return self.x[self.val_idx]

    @property
    def y_val(self) -> np.ndarray:
        return self.data.y[self.val_idx]

    def source_model(self, *, new_head: bool = False) -> nn.Module:
        """A copy of the source model; its head is replaced (drawn from the seed) when asked or
        when the target's classes differ from the source's."""
        if self.data.source_model is None:
            raise ValueError(f"strategy {self.candidate.strategy!r} needs the source model")
        input_dim = int(self.data.architecture["input_dim"])
        with torch.random.fork_rng(devices=[]):
            # The new head depends on the seed alone, and the caller's generator is untouched.
            torch.manual_seed(self.settings.seed)
            model = _models.copy_source(self.data.source_model, input_dim)
            if new_head or not self.data.keep_head:
                _models.replace_head(model, self.data.output_dim)
            else:
                _models.check_head(model, self.data.output_dim)
        _models.set_trainable(model, lambda name: True)
        if self.candidate.normalization == "target":
            refitted = _models.refit_batchnorm(model, self.x_train)
            if refitted:
                self.notes.append(
                    f"batch-norm statistics of {refitted} layer(s) refitted on the target"
                )
        return model

    def fresh_model(self) -> nn.Module:
        """The source's architecture with new weights drawn from the seed."""
        input_dim = int(self.data.architecture["input_dim"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.settings.seed)
            model = architectures.build_model(
                self.data.architecture, input_dim, self.data.output_dim
            )
        _models.set_trainable(model, lambda name: True)
        return model

    def fit_kwargs(self) -> dict[str, Any]:
        """The arguments of `training.fit` every strategy shares."""
        s = self.settings
        return {
            "target_spec": self.data.target_spec,
            "batch_size": s.batch_size,
            "weight_decay": s.weight_decay,
            "optimizer": s.optimizer,
            "early_stopping_patience": s.early_stopping_patience,
            "seed": s.seed,
            "on_epoch": self.on_epoch,
            "on_batch": self.on_batch,
        }

    def fit(self, model: nn.Module, **overrides: Any) -> Trained:
        """Train `model` on the run's rows with the shared settings (and `overrides`)."""
        kwargs = self.fit_kwargs()
        if self.candidate.spec.layer_lr and self.settings.layer_lr_decay < 1.0:
            kwargs["lr_scales"] = _models.layer_lr_scales(model, self.settings.layer_lr_decay)
            self.notes.append(f"layer-wise learning rates: decay {self.settings.layer_lr_decay}")
        x_train, y_train = overrides.pop("x_train", self.x_train), overrides.pop("y_train", None)
        kwargs.update(overrides)
        result = training.fit(
            model,
            x_train,
            self.y_train if y_train is None else y_train,
            self.x_val,
            self.y_val,
            epochs=kwargs.pop("epochs", self.settings.epochs),
            learning_rate=kwargs.pop("learning_rate", self.settings.learning_rate),
            **kwargs,
        )
        return Trained(model, result, self.notes)

    def fit_head_on_features(self, model: nn.Module, epochs: int) -> training.TrainResult:
        """Train only `model.head` for `epochs` on the frozen source trunk's features.

        The same as training the whole model with its trunk frozen (the trunk runs in eval
        mode either way), but the trunk's forward pass is computed once for every fold and
        candidate instead of once per batch.
        """
        features = self.data.source_features(self.candidate.normalization)
        head = _models.head_of(model)
        if features is None:
            _models.set_trunk_frozen(model, True)
            return training.fit(
                model,
                self.x_train,
                self.y_train,
                self.x_val,
                self.y_val,
                epochs=epochs,
                learning_rate=self.settings.learning_rate,
                **self.fit_kwargs(),
            )
        return training.fit(
            head,
            features[self.train_idx],
            self.y_train,
            features[self.val_idx],
            self.y_val,
            epochs=epochs,
            learning_rate=self.settings.learning_rate,
            **self.fit_kwargs(),
        )

    def evaluate(self, model: nn.Module) -> training.TrainResult:
        """A result for a model fitted without epochs (closed form)."""
        spec = self.data.target_spec
        metrics = {
            "train": training.evaluate(model, self.x_train, self.y_train, spec),
            "validation": (
                training.evaluate(model, self.x_val, self.y_val, spec)
                if len(self.val_idx)
                else None
            ),
        }
        return training.TrainResult(0, 0, False, [], metrics)


def holdout(
    candidate: Candidate,
    data: TransferData,
    rows: np.ndarray,
    validation_fraction: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The rows `candidate` trains on and the validation rows whose loss picks its best epoch,
    split from `rows` as a job naming the candidate splits its target rows.

    A closed-form candidate holds nothing out: it has no epochs to pick from.
    """
    if candidate.spec.closed_form or validation_fraction == 0 or len(rows) < 2:
        return rows, np.zeros(0, dtype=np.int64)
    strata = data.y[rows] if data.task == "classification" else None
    train, val = training.split_indices(len(rows), validation_fraction, seed, strata)
    return rows[train], rows[val]


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
    if len(train_idx) == 0:
        raise DataError("there are no rows to train on")
    spec = candidate.spec
    if spec.uses_source_weights and data.source_model is None:
        raise ValueError(f"strategy {candidate.strategy!r} needs the source model")
    run = Run(candidate, data, settings, train_idx, val_idx, on_epoch, on_batch)
    return spec.train(run, spec.prepare(run))


def prepare_model(
    strategy: str,
    source_model: nn.Module | None,
    architecture: dict[str, Any],
    input_dim: int,
    output_dim: int,
    *,
    keep_head: bool,
    seed: int,
) -> nn.Module:
    """The model `strategy` starts training from, on the source's scaling: which weights it
    starts from and which of them train. New parameters are drawn from `seed` alone."""
    spec = registry.get(strategy)
    data = TransferData(
        target_spec={"task": "classification", "classes": list(range(output_dim))},
        x={"source": np.zeros((0, input_dim), dtype=np.float32)},
        y=np.zeros(0, dtype=np.int64),
        source_model=source_model,
        architecture={**architecture, "input_dim": input_dim, "output_dim": output_dim},
        keep_head=keep_head,
    )
    empty = np.zeros(0, dtype=np.int64)
    return spec.prepare(Run(Candidate(strategy, "source"), data, Settings(seed=seed), empty, empty))
