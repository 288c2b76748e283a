"""One explicit training loop: setup, epochs with early stopping, then final evaluation."""

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.ml.errors import DataError
from app.ml.metrics import accuracy, classification_metrics, r2, regression_metrics

OPTIMIZERS = ("adam", "adamw", "sgd")


def set_seed(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global random generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def split_indices(
    n: int, validation_fraction: float, seed: int, labels: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled (train, validation) indices, stratified when every class of `labels` has 2+ rows."""
    if n < 1:
        raise DataError("there are no rows to train on")
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    rng = np.random.default_rng(seed)
    n_val = 0
    if validation_fraction > 0 and n >= 2:
        n_val = min(max(1, round(n * validation_fraction)), n - 1)
    groups: list[np.ndarray] = [rng.permutation(n)]
    if labels is not None and n_val:
        _, inverse, sizes = np.unique(np.asarray(labels), return_inverse=True, return_counts=True)
        if sizes.min() >= 2:
            groups = [rng.permutation(np.flatnonzero(inverse == k)) for k in range(len(sizes))]
    counts = _proportional_counts(np.array([len(g) for g in groups]), n_val)
    val = np.concatenate([g[:c] for g, c in zip(groups, counts, strict=True)])
    train = np.concatenate([g[c:] for g, c in zip(groups, counts, strict=True)])
    return rng.permutation(train).astype(np.int64), rng.permutation(val).astype(np.int64)


def _proportional_counts(sizes: np.ndarray, total: int) -> np.ndarray:
    """Split `total` across groups in proportion to their sizes (largest remainder)."""
    exact = sizes * total / sizes.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - counts.sum()]] += 1
    # Every group keeps at least one training row when it has one to spare.
    return np.minimum(counts, np.maximum(sizes - 1, 0))


@dataclass
class EpochMetrics:
    """What one epoch reports to the progress callback."""

    epoch: int
    epochs: int
    train_loss: float
    val_loss: float | None
    val_score: float | None
    score_name: str

    def as_dict(self) -> dict[str, Any]:
        """The event payload: epoch, epochs, train_loss, val_loss and the named score."""
        return {
            "epoch": self.epoch,
            "epochs": self.epochs,
            "train_loss": self.train_loss,
            "val_loss": self.val_loss,
            self.score_name: self.val_score,
        }


@dataclass
class TrainResult:
    """Outcome of `fit`: how far it ran, the per-epoch history and the final metrics."""

    epochs_run: int
    best_epoch: int
    stopped_early: bool
    history: list[dict[str, Any]]
    metrics: dict[str, Any]


def fit(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    target_spec: dict[str, Any],
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    optimizer: str,
    early_stopping_patience: int | None,
    seed: int,
    on_epoch: Callable[[EpochMetrics], None] | None = None,
    on_batch: Callable[[], None] | None = None,
    lr_scales: dict[str, float] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    sample_weight: np.ndarray | None = None,
) -> TrainResult:
    """Train `model` in place and return its history and final train/validation metrics.

    Targets are class indices (classification) or standardised values (regression), as
    `encode_target` gives them. With validation rows the weights of the epoch with the lowest
    validation loss are restored at the end. Exceptions from `on_epoch` propagate unchanged, and
    so do those of `on_batch`, called after every optimiser step (a cheap check, e.g. a
    deadline, that must not wait for the end of a long epoch).

    `x` may have any trailing shape the model accepts (rows x features, rows x C x H x W...).
    `lr_scales` multiplies the learning rate per parameter name (layer-wise rates),
    `penalty` is added to every batch loss (e.g. L2-SP), and `sample_weight` weights the
    training rows' losses (e.g. target rows above source rows).
    """
    # Setup.
    task = target_spec["task"]
    if task not in ("classification", "regression"):
        raise ValueError(f"unknown task {task!r}")
    if epochs < 1 or batch_size < 1 or not learning_rate > 0:
        raise ValueError("epochs, batch_size and learning_rate must be positive")
    n = len(x_train)
    if n == 0:
        raise DataError("there are no rows to train on")
    set_seed(seed)  # dropout draws from the global generator
    generator = torch.Generator().manual_seed(seed)
    xt, yt = _tensors(x_train, y_train, task)
    xv, yv = _tensors(x_val, y_val, task)
    has_val = len(xv) > 0
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    opt = _optimizer(optimizer, _param_groups(params, lr_scales), learning_rate, weight_decay)
    weights = None
    if sample_weight is not None:
        if len(sample_weight) != n:
            raise ValueError(f"{len(sample_weight)} sample weights for {n} rows")
        weights = torch.as_tensor(np.asarray(sample_weight, dtype=np.float32))
    patience = early_stopping_patience or 0
    score_name = "val_accuracy" if task == "classification" else "val_r2"

    # Train.
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
    stopped_early = False
    epoch = 0
    for epoch in range(1, epochs + 1):
        _train_mode(model)
        total = 0.0
        for batch in torch.randperm(n, generator=generator).split(batch_size):
            opt.zero_grad(set_to_none=True)
            out = _forward(model, xt[batch], task)
            if weights is None:
                loss = _loss(out, yt[batch], task)
            else:
                loss = _weighted_loss(out, yt[batch], weights[batch], task)
            total += loss.item() * len(batch)
            if penalty is not None:
                loss = loss + penalty()
            loss.backward()
            opt.step()
            if on_batch is not None:
                on_batch()
        train_loss = total / n
        if not math.isfinite(train_loss):
            raise DataError(
                f"training diverged at epoch {epoch}: loss became {train_loss}; "
                "try a lower learning_rate",
                code="diverged",
            )
        val_loss: float | None = None
        val_score: float | None = None
        if has_val:
            val_loss, val_score = _validate(model, xv, yv, task)
            if val_loss < best_loss:
                best_loss, best_epoch, stale = val_loss, epoch, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                stale += 1
        else:
            best_epoch = epoch
        metrics = EpochMetrics(epoch, epochs, train_loss, val_loss, val_score, score_name)
        history.append(metrics.as_dict())
        if on_epoch is not None:
            on_epoch(metrics)
        if has_val and patience and stale >= patience:
            stopped_early = epoch < epochs
            break

    # Restore the best epoch and evaluate.
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    final = {
        "train": evaluate(model, x_train, y_train, target_spec),
        "validation": evaluate(model, x_val, y_val, target_spec) if has_val else None,
    }
    return TrainResult(epoch, best_epoch, stopped_early, history, final)


def evaluate(
    model: nn.Module, x: np.ndarray, y: np.ndarray, target_spec: dict[str, Any]
) -> dict[str, Any]:
    """Loss and task metrics on encoded rows; regression scores use the original scale."""
    task = target_spec["task"]
    xs, ys = _tensors(x, y, task)
    model.eval()
    with torch.inference_mode():
        out = _forward(model, xs, task)
        loss = float(_loss(out, ys, task))
        if task == "classification":
            return classification_metrics(loss, ys.numpy(), torch.softmax(out, dim=1).numpy())
        return regression_metrics(loss, target_spec, ys.numpy(), out.numpy())


def predict_batch(model: nn.Module, x: np.ndarray, task: str) -> np.ndarray:
    """Class probabilities (n, classes) or standardised regression outputs (n,), as float32."""
    model.eval()
    with torch.inference_mode():
        out = _forward(model, torch.as_tensor(np.asarray(x, dtype=np.float32)), task)
        if task == "classification":
            out = torch.softmax(out, dim=1)
        return out.numpy().astype(np.float32, copy=False)


def _tensors(x: np.ndarray, y: np.ndarray, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    if len(x) != len(y):
        raise ValueError(f"{len(x)} feature rows but {len(y)} targets")
    xs = torch.as_tensor(np.asarray(x, dtype=np.float32))
    y_dtype = np.int64 if task == "classification" else np.float32
    return xs, torch.as_tensor(np.asarray(y, dtype=y_dtype))


def _forward(model: nn.Module, x: torch.Tensor, task: str) -> torch.Tensor:
    out: torch.Tensor = model(x)
    # Regression heads have one output; drop that axis so outputs line up with targets (n,).
    return out if task == "classification" else out.reshape(len(x))


def _loss(out: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(out, y)
    return F.mse_loss(out, y)


def _weighted_loss(
    out: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, task: str
) -> torch.Tensor:
    if task == "classification":
        per_row = F.cross_entropy(out, y, reduction="none")
    else:
        per_row = F.mse_loss(out, y, reduction="none")
    return (per_row * weight).sum() / weight.sum().clamp_min(1e-12)


def _param_groups(
    params: list[tuple[str, nn.Parameter]], lr_scales: dict[str, float] | None
) -> list[dict[str, Any]]:
    """One optimiser group per distinct learning-rate multiplier."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in params:
        scale = 1.0 if lr_scales is None else lr_scales.get(name, 1.0)
        groups.setdefault(scale, []).append(param)
    return [{"params": ps, "lr_scale": scale} for scale, ps in groups.items()]


def _validate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str
) -> tuple[float, float | None]:
    model.eval()
    with torch.inference_mode():
        out = _forward(model, x, task)
        loss = float(_loss(out, y, task))
    if task == "classification":
        return loss, accuracy(y.numpy(), out.argmax(dim=1).numpy())
    # R² does not change under the affine standardisation, so the encoded scale is enough here.
    return loss, r2(y.numpy().astype(np.float64), out.numpy().astype(np.float64))


def _train_mode(model: nn.Module) -> None:
    model.train()
    # A frozen part is a fixed feature extractor: its dropout must not perturb the features.
    for child in model.children():
        params = list(child.parameters())
        if params and not any(p.requires_grad for p in params):
            child.eval()


def _optimizer(
    name: str, groups: list[dict[str, Any]], learning_rate: float, weight_decay: float
) -> torch.optim.Optimizer:
    for group in groups:
        group["lr"] = learning_rate * group.pop("lr_scale")
    opt: torch.optim.Optimizer
    # The fused kernel updates every tensor in one call: on the small models of tabular
    # transfer the per-tensor loop cost more than the arithmetic (2.2 against 1.4 ms a step
    # for a [64, 64] MLP), and auto's cross-validation takes thousands of steps.
    fused = _can_fuse(groups)
    if name == "adam":
        opt = torch.optim.Adam(groups, lr=learning_rate, weight_decay=weight_decay, fused=fused)
    elif name == "adamw":
        opt = torch.optim.AdamW(groups, lr=learning_rate, weight_decay=weight_decay, fused=fused)
    elif name == "sgd":
        opt = torch.optim.SGD(groups, lr=learning_rate, momentum=0.9, weight_decay=weight_decay)
    else:
        raise ValueError(f"unknown optimizer {name!r}; expected one of {list(OPTIMIZERS)}")
    return opt


def _can_fuse(groups: list[dict[str, Any]]) -> bool | None:
    params = [p for group in groups for p in group["params"]]
    return (
        True if all(p.dtype == torch.float32 and p.device.type == "cpu" for p in params) else None
    )
