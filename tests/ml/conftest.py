"""Tiny, deterministic datasets and models shared by the ML tests."""

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from app.ml.architectures import build_model
from app.ml.training import TrainResult, fit, set_seed

ARCHITECTURE: dict[str, Any] = {"type": "mlp", "hidden_layers": [8, 8], "activation": "relu"}
CLASSIFICATION: dict[str, Any] = {"task": "classification", "classes": [0, 1]}
REGRESSION: dict[str, Any] = {"task": "regression", "mean": 0.0, "std": 1.0}


@pytest.fixture(autouse=True)
def _seeded_single_thread() -> Iterator[None]:
    # Tiny models train ~10x faster on one thread when the CPUs are busy; restored afterwards
    # because in production the worker, not app.ml, chooses the thread count.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_seed(16)
    yield
    torch.set_num_threads(threads)


def blobs(n: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two well-separated Gaussian blobs in 4 dimensions, labels 0 and 1."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 2
    x = rng.normal(0.0, 0.3, size=(n, 4)) + np.where(y[:, None] == 1, 2.0, -2.0)
    return x.astype(np.float32), y.astype(np.int64)


def linear(n: int = 128, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noiseless linear regression problem with standardised-looking targets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = x @ np.array([0.5, -0.3, 0.2, 0.1], dtype=np.float32)
    return x, y.astype(np.float32)


def empty(dim: int, dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, dim), dtype=np.float32), np.zeros((0,), dtype=dtype)


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    target_spec: dict[str, Any] = CLASSIFICATION,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    epochs: int = 10,
    seed: int = 0,
    **overrides: Any,
) -> TrainResult:
    """`fit` with small defaults, so each test only states what it is about."""
    x_val, y_val = validation if validation is not None else empty(x.shape[1], y.dtype.type)
    options: dict[str, Any] = {
        "batch_size": 16,
        "learning_rate": 0.01,
        "weight_decay": 0.0,
        "optimizer": "adam",
        "early_stopping_patience": None,
    }
    options.update(overrides)
    return fit(
        model, x, y, x_val, y_val, target_spec=target_spec, epochs=epochs, seed=seed, **options
    )


@pytest.fixture
def source_model() -> nn.Module:
    """A 4→8→8→2 classifier already trained on the blobs, as a registered source would be."""
    model = build_model(ARCHITECTURE, 4, 2)
    train(model, *blobs(), epochs=5)
    return model
