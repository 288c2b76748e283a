"""`structure`: the source's architecture and settings, target-specific weights from scratch."""

from torch import nn

from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def prepare(run: Run) -> nn.Module:
    return run.fresh_model()


def train(run: Run, model: nn.Module) -> Trained:
    return run.fit(model)


SPEC = register(
    StrategySpec(
        name="structure",
        description="reuse the source architecture and its settings, learn target-specific "
        "parameters from a fresh initialisation (on the target's own input scaling).",
        uses_source_weights=False,
        trains="every weight, freshly initialised",
        prepare=prepare,
        train=train,
        # The same model as `scratch`: auto scores it once, under that name.
        in_auto=False,
        simplicity=25,
    )
)
