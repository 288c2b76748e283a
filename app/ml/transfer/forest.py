"""`forest`: a target-only random forest from scikit-learn, stored as a torch module."""

from torch import nn

from app.ml.forest import FOREST_MAX_LEAVES, FOREST_TREES, fit_forest
from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def prepare(run: Run) -> nn.Module:
    """Nothing to start from: `train` grows the trees and returns the fitted forest."""
    return nn.Identity()


def train(run: Run, model: nn.Module) -> Trained:
    x_train = run.x_train
    forest, architecture = fit_forest(
        x_train.reshape(len(x_train), -1), run.y_train, run.data.target_spec, seed=run.settings.seed
    )
    return Trained(
        forest,
        run.evaluate(forest),
        [
            f"random forest of {architecture['trees']} trees (at most {FOREST_MAX_LEAVES} "
            "leaves each) grown by scikit-learn (no epochs)"
        ],
        architecture=architecture,
    )


SPEC = register(
    StrategySpec(
        name="forest",
        description=f"target-only random forest ({FOREST_TREES} trees of at most "
        f"{FOREST_MAX_LEAVES} leaves) from scikit-learn on the target's own input scaling, "
        "stored as comparisons and matrix products, so it serves and exports like a network.",
        uses_source_weights=False,
        trains="a random forest grown on the target rows",
        prepare=prepare,
        train=train,
        tabular_only=True,
        closed_form=True,
        # Not tried by auto: as a candidate it took the quality benchmark's tuning half from
        # 8 to 7 of 11 tasks within one std of the best (benchmarks/auto_rules.py, "+forest").
        in_auto=False,
        simplicity=22,
    )
)
