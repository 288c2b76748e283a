"""`l2_sp`: fine-tune everything, pulled towards the source weights (Li et al., 2018)."""

from collections.abc import Callable

import torch
from torch import nn

from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def penalty(
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

    def total() -> torch.Tensor:
        value = torch.zeros(())
        if alpha:
            for param, source in transferred:
                value = value + alpha * (param - source).pow(2).sum()
        if beta:
            for param in new:
                value = value + beta * param.pow(2).sum()
        return value

    return total


def prepare(run: Run) -> nn.Module:
    return run.source_model()


def train(run: Run, model: nn.Module) -> Trained:
    assert run.data.source_model is not None
    reference = dict(run.data.source_model.state_dict())
    s = run.settings
    return run.fit(model, penalty=penalty(model, reference, alpha=s.l2_sp_alpha, beta=s.l2_sp_beta))


SPEC = register(
    StrategySpec(
        name="l2_sp",
        description="fine-tune everything with alpha·Σ‖w - w_source‖² on the transferred "
        "weights and beta·Σ‖w‖² on new ones (Li et al., 2018).",
        uses_source_weights=True,
        trains="every weight, pulled towards the source",
        prepare=prepare,
        train=train,
        layer_lr=True,
        simplicity=60,
        hyperparameters=("l2_sp_alpha", "l2_sp_beta", "layer_lr_decay"),
    )
)
