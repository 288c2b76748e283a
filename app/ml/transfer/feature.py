"""`feature`: the source trunk as a frozen feature extractor, a new head learnt on it."""

from torch import nn

from app.ml.transfer import _models
from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def prepare(run: Run) -> nn.Module:
    # A new head by definition, even when the classes are the source's.
    model = run.source_model(new_head=True)
    _models.set_trunk_frozen(model, True)
    return model


def train(run: Run, model: nn.Module) -> Trained:
    result = run.fit_head_on_features(model, run.settings.epochs)
    return Trained(model, result, run.notes)


SPEC = register(
    StrategySpec(
        name="feature",
        description="freeze the source feature extractor (every layer but the head) and "
        "learn a new target head on its features.",
        uses_source_weights=True,
        trains="the new head",
        prepare=prepare,
        train=train,
        simplicity=30,
    )
)
