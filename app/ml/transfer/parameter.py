"""`parameter`: start from every source weight and fine-tune them all on the target."""

from torch import nn

from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def prepare(run: Run) -> nn.Module:
    return run.source_model()


def train(run: Run, model: nn.Module) -> Trained:
    return run.fit(model)


SPEC = register(
    StrategySpec(
        name="parameter",
        description="start from the source weights and fine-tune all of them on the target "
        "(a new head when the target's classes differ).",
        uses_source_weights=True,
        trains="every weight",
        prepare=prepare,
        train=train,
        layer_lr=True,
        simplicity=40,
        hyperparameters=("layer_lr_decay",),
    )
)
