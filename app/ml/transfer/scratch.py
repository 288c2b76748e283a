"""`scratch`: the target-only baseline, the source's architecture with fresh weights."""

from app.ml.transfer import structure
from app.ml.transfer.registry import StrategySpec, register

SPEC = register(
    StrategySpec(
        name="scratch",
        description="the target-only baseline: the same architecture, fresh weights, trained "
        "on the target rows alone (on their own input scaling).",
        uses_source_weights=False,
        trains="every weight, freshly initialised",
        prepare=structure.prepare,
        train=structure.train,
        simplicity=20,
    )
)
