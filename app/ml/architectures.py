"""Model builders, registered by name so an architecture dict can be rebuilt from JSON."""

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "silu": nn.SiLU,
}


class MLP(nn.Module):
    """A feature trunk followed by a linear head; transfer strategies swap or freeze the parts."""

    def __init__(self, trunk: nn.Sequential, head: nn.Linear) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    @property
    def feature_dim(self) -> int:
        """Width of the features the head reads."""
        return self.head.in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (classification) or standardised values (regression), shape (n, output_dim)."""
        return self.head(self.trunk(x))


def build_mlp(
    input_dim: int,
    output_dim: int,
    *,
    hidden_layers: list[int],
    dropout: float = 0.0,
    activation: str = "relu",
) -> MLP:
    """An MLP with Linear, activation and Dropout per hidden layer, then a Linear head."""
    _check_dims(input_dim, output_dim)
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"unknown activation {activation!r}; expected one of {sorted(ACTIVATIONS)}"
        )
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if not isinstance(hidden_layers, list | tuple):
        raise ValueError(f"hidden_layers must be a list of sizes, got {hidden_layers!r}")
    layers: list[nn.Module] = []
    width = input_dim
    for size in hidden_layers:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"hidden layer sizes must be positive integers, got {size!r}")
        # Dropout is kept even at p=0 so every MLP with the same layers has the same structure.
        layers += [nn.Linear(width, size), ACTIVATIONS[activation](), nn.Dropout(dropout)]
        width = size
    return MLP(nn.Sequential(*layers), nn.Linear(width, output_dim))


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"mlp": build_mlp}


def build_model(architecture: dict[str, Any], input_dim: int, output_dim: int) -> nn.Module:
    """Build a freshly initialised model from an architecture dict such as {"type": "mlp", ...}."""
    kind = architecture.get("type")
    builder = ARCHITECTURES.get(kind) if isinstance(kind, str) else None
    if builder is None:
        raise ValueError(
            f"unknown architecture type {kind!r}; expected one of {sorted(ARCHITECTURES)}"
        )
    # Only the builder's keyword options are passed, so extra keys in a stored spec are ignored.
    options = {
        name: param
        for name, param in inspect.signature(builder).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    missing = [n for n, p in options.items() if p.default is p.empty and n not in architecture]
    if missing:
        raise ValueError(f"architecture {kind!r} needs {missing}")
    kwargs = {key: value for key, value in architecture.items() if key in options}
    return builder(input_dim, output_dim, **kwargs)


def new_head(model: nn.Module, output_dim: int) -> nn.Linear:
    """A freshly initialised head that reads the same features as `model`'s current head."""
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `head` to replace")
    _check_dims(head.in_features, output_dim)
    return nn.Linear(head.in_features, output_dim).to(
        device=head.weight.device, dtype=head.weight.dtype
    )


def _check_dims(input_dim: int, output_dim: int) -> None:
    if input_dim < 1 or output_dim < 1:
        raise ValueError(
            f"input and output sizes must be at least 1, got {input_dim} and {output_dim}"
        )
