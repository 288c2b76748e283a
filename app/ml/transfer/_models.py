"""Operations on models that strategies share: copy the source, swap the head, freeze parts."""

import copy
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from app.ml.architectures import new_head


def copy_source(source_model: nn.Module, input_dim: int) -> nn.Module:
    """A deep copy of the source model, so that training never writes into its weights."""
    head_of(source_model)
    # A model that reshapes its input (the CNN) says how wide it is; for an MLP it is the
    # width of the first Linear layer.
    reads = getattr(source_model, "input_dim", None)
    if reads is None:
        first = next((m for m in source_model.modules() if isinstance(m, nn.Linear)), None)
        reads = None if first is None else first.in_features
    if reads is not None and reads != input_dim:
        raise ValueError(f"the source model reads {reads} features but the target has {input_dim}")
    return copy.deepcopy(source_model)


def replace_head(model: nn.Module, output_dim: int) -> None:
    """A freshly initialised linear head with `output_dim` outputs."""
    model.head = new_head(model, output_dim)


def check_head(model: nn.Module, output_dim: int) -> None:
    head_out = head_of(model).out_features
    if head_out != output_dim:
        raise ValueError(f"cannot keep a head with {head_out} outputs for {output_dim} outputs")


def head_of(model: nn.Module) -> nn.Linear:
    head = getattr(model, "head", None)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no linear `head`; cannot transfer it")
    return head


def set_trainable(model: nn.Module, trainable: Callable[[str], bool]) -> None:
    for name, param in model.named_parameters():
        param.requires_grad_(trainable(name))


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters an optimiser would update."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the output head's parameters."""
    return [f"head.{name}" for name, _ in head_of(model).named_parameters()]


def set_trunk_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze (linear probe) or unfreeze (fine-tune) everything but the head."""
    set_trainable(model, lambda name: name.startswith("head.") or not frozen)


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


def refit_batchnorm(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> int:
    """Recompute every batch-norm layer's running statistics on `x`; returns how many layers.

    Only the statistics change: no parameter is updated and dropout is left as it was.
    """
    norms = batchnorm_layers(model)
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


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def trunk_features(model: nn.Module, x: np.ndarray, batch_size: int = 4096) -> np.ndarray:
    """The trunk's output for `x` in eval mode, flattened to rows x features."""
    trunk = getattr(model, "trunk", None)
    if not isinstance(trunk, nn.Module):
        raise ValueError(f"{type(model).__name__} has no `trunk`")
    was_training = trunk.training
    trunk.eval()
    with torch.inference_mode():
        inputs = torch.as_tensor(np.asarray(x, dtype=np.float32))
        parts = [trunk(batch).reshape(len(batch), -1) for batch in inputs.split(batch_size)]
    trunk.train(was_training)
    if not parts:
        return np.zeros((0, head_of(model).in_features), dtype=np.float32)
    return torch.cat(parts).numpy()
