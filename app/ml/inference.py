"""Inference-only forward functions: the same maths as the module, less Python per call."""

from collections.abc import Callable

import torch
from torch import nn

from app.ml.architectures import MLP

Forward = Callable[[torch.Tensor], torch.Tensor]


def inference_forward(model: nn.Module) -> Forward:
    """A forward function for an eval-mode model, flattened where its structure allows.

    `nn.Module.__call__` costs a few microseconds per layer (hooks, bookkeeping), which is
    most of the time of a small MLP on a few rows. For a model that is a chain of plain
    layers (an MLP's trunk and head), this calls each layer's `forward` directly and leaves
    out eval-mode Dropout, which is the identity. Anything else gets the module itself.
    """
    if model.training:
        raise ValueError("inference_forward needs a model in eval mode")
    layers = _chain(model)
    if layers is None:
        return model
    steps = tuple(layer.forward for layer in layers if not isinstance(layer, nn.Dropout))

    def forward(x: torch.Tensor) -> torch.Tensor:
        for step in steps:
            x = step(x)
        return x

    return forward


def _chain(model: nn.Module) -> list[nn.Module] | None:
    """The leaf layers of a model whose forward is exactly `head(trunk(x))` or a Sequential."""
    if type(model) is nn.Sequential:
        parts: list[nn.Module] = list(model)
    elif type(model) is MLP:
        # MLP.forward is head(trunk(x)).
        parts = [model.trunk, model.head]
    else:
        return None
    layers: list[nn.Module] = []
    for part in parts:
        if type(part) is nn.Sequential:
            nested = _chain(part)
            if nested is None:
                return None
            layers.extend(nested)
        elif _is_plain_layer(part):
            layers.append(part)
        else:
            return None
    return layers


_PLAIN_LAYERS = (
    nn.Linear,
    nn.ReLU,
    nn.GELU,
    nn.Tanh,
    nn.Sigmoid,
    nn.LeakyReLU,
    nn.SiLU,
    nn.Dropout,
    nn.Identity,
)


def _is_plain_layer(module: nn.Module) -> bool:
    # Hooks would be skipped by calling forward directly, so a hooked layer is not plain.
    return (
        type(module) in _PLAIN_LAYERS
        and not module._forward_hooks
        and not module._forward_pre_hooks
    )
