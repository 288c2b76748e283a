"""Transfer strategies: how a fine-tuning model is made from a trained source model."""

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from app.ml.architectures import build_model, new_head

Strategy = Callable[..., nn.Module]


def parameter_transfer(
    source_model: nn.Module,
    architecture: dict[str, Any],
    input_dim: int,
    output_dim: int,
    *,
    keep_head: bool,
) -> nn.Module:
    """Start from all source weights and train everything; a new head unless `keep_head`."""
    model = _copy_source(source_model, input_dim)
    if keep_head:
        head_out = _head(model).out_features
        if head_out != output_dim:
            raise ValueError(f"cannot keep a head with {head_out} outputs for {output_dim} outputs")
    else:
        model.head = new_head(model, output_dim)
    _set_trainable(model, lambda name: True)
    return model


def feature_transfer(
    source_model: nn.Module,
    architecture: dict[str, Any],
    input_dim: int,
    output_dim: int,
    *,
    keep_head: bool,
) -> nn.Module:
    """Freeze the source trunk as a feature extractor and learn a new head on top."""
    # `keep_head` is ignored on purpose: this strategy is defined as learning a new target head.
    model = _copy_source(source_model, input_dim)
    model.head = new_head(model, output_dim)
    _set_trainable(model, lambda name: name.startswith("head."))
    return model


def structure_transfer(
    source_model: nn.Module,
    architecture: dict[str, Any],
    input_dim: int,
    output_dim: int,
    *,
    keep_head: bool,
) -> nn.Module:
    """Reuse only the source's architecture, freshly initialised, and train everything."""
    model = build_model(architecture, input_dim, output_dim)
    _set_trainable(model, lambda name: True)
    return model


STRATEGIES: dict[str, Strategy] = {
    "parameter": parameter_transfer,
    "feature": feature_transfer,
    "structure": structure_transfer,
}


def prepare_model(
    strategy: str,
    source_model: nn.Module,
    architecture: dict[str, Any],
    input_dim: int,
    output_dim: int,
    *,
    keep_head: bool,
    seed: int,
) -> nn.Module:
    """Build the model to fine-tune; new parameters are drawn reproducibly from `seed`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {sorted(STRATEGIES)}")
    # fork_rng keeps the caller's global RNG untouched while making the new weights depend
    # on `seed` alone.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return STRATEGIES[strategy](
            source_model, architecture, input_dim, output_dim, keep_head=keep_head
        )


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an optimiser would update."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _copy_source(source_model: nn.Module, input_dim: int) -> nn.Module:
    _head(source_model)
    # A model that reshapes its input (the CNN) says how wide it is; for an MLP it is the
    # width of the first Linear layer.
    reads = getattr(source_model, "input_dim", None)
    if reads is None:
        first = next((m for m in source_model.modules() if isinstance(m, nn.Linear)), None)
        reads = None if first is None else first.in_features
    if reads is not None and reads != input_dim:
        raise ValueError(f"the source model reads {reads} features but the target has {input_dim}")
    # A deep copy so that training never writes into the registered source weights.
    return copy.deepcopy(source_model)


def _head(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `head`; cannot transfer it")
    return head


def _set_trainable(model: nn.Module, trainable: Callable[[str], bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(trainable(name))
