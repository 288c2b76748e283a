"""Transfer strategies: how a fine-tuning model is made from a trained source model."""

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
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
    # lp_ft, l2_sp and joint start from every source weight like `parameter`; what differs is
    # how they train (phases, a penalty, extra rows), which app.ml.transfer drives.
    "lp_ft": parameter_transfer,
    "l2_sp": parameter_transfer,
    "joint": parameter_transfer,
    # The target-only baseline: the source's architecture, nothing of its weights.
    "scratch": structure_transfer,
}

# Strategies whose model carries no source weights.
TARGET_ONLY = frozenset({"structure", "scratch"})


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


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the output head's parameters."""
    return [f"head.{name}" for name, _ in _head(model).named_parameters()]


def set_trunk_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (linear probe) or unfreeze (fine-tune) everything but the head."""
    _set_trainable(model, lambda name: name.startswith("head.") or not frozen)


def layer_lr_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate multipliers: 1 for the head, decay**k for the k-th weight layer below it.

    A layer is a module whose weight has two or more dimensions (linear, convolution);
    one-dimensional parameter modules (normalisation) share the rate of the layer before them.
    """
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"layer_lr_decay must be in (0, 1], got {decay}")
    head_names = set(head_parameter_names(model))
    layers: list[list[str]] = []
    for module_name, module in model.named_modules():
        own = [(n, p) for n, p in module.named_parameters(recurse=False)]
        if not own:
            continue
        names = [f"{module_name}.{n}" if module_name else n for n, _ in own]
        if any(name in head_names for name in names):
            continue
        weight = getattr(module, "weight", None)
        if (isinstance(weight, torch.Tensor) and weight.dim() >= 2) or not layers:
            layers.append(names)
        else:
            layers[-1].extend(names)
    scales = {name: 1.0 for name in head_names}
    for depth, names in enumerate(reversed(layers), start=1):
        for name in names:
            scales[name] = decay**depth
    return scales


def l2_sp_penalty(
    model: nn.Module,
    reference: dict[str, torch.Tensor],
    *,
    alpha: float,
    beta: float,
) -> Callable[[], torch.Tensor]:
    """alpha * sum ||w - w_source||^2 over transferred weights + beta * sum ||w||^2 over new ones.

    A parameter counts as transferred when `reference` (the source state) holds a tensor of
    the same name and shape; anything else, such as a replaced head, is new.
    """
    transferred: list[tuple[nn.Parameter, torch.Tensor]] = []
    new: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        source = reference.get(name)
        if source is not None and source.shape == param.shape:
            transferred.append((param, source.detach().clone()))
        else:
            new.append(param)

    def penalty() -> torch.Tensor:
        total = torch.zeros(())
        if alpha:
            for param, source in transferred:
                total = total + alpha * (param - source).pow(2).sum()
        if beta:
            for param in new:
                total = total + beta * param.pow(2).sum()
        return total

    return penalty


def refit_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> int:
    """Recompute every batch-norm layer's running statistics on `x`; returns how many layers.

    Only the statistics change: no parameter is updated and dropout is left as it was.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms or len(x) < 2:  # batch norm needs two rows to have a variance
        return 0
    was_training = model.training
    momenta = [m.momentum for m in norms]
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over every batch below
        norm.train()
    with torch.no_grad():
        inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
        for batch in inputs.split(batch_size):
            if len(batch) > 1:
                model(batch)
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(was_training)
    return len(norms)
