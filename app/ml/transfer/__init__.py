"""Transfer learning: the strategy registry, candidates, cross-validated choice and the plan.

Each strategy is one module of this package that declares itself to `registry` on import;
importing the package imports them all, so the registry is complete wherever it is read.
"""

from app.ml.transfer import (  # noqa: F401  (each registers its strategy)
    feature,
    forest,
    joint,
    l2_sp,
    linear,
    lp_ft,
    parameter,
    scratch,
    structure,
)
from app.ml.transfer.candidates import (
    Candidate,
    Run,
    Settings,
    Trained,
    TransferData,
    holdout,
    prepare_model,
    train_candidate,
)
from app.ml.transfer.plan import BASELINE, Request, Result, candidates_for, fine_tune
from app.ml.transfer.registry import AUTO, StrategySpec
from app.ml.transfer.selection import (
    Choice,
    Score,
    choose,
    cross_validate,
    fold_indices,
    fold_plan,
    score_name,
)
from app.ml.transfer.shift import domain_shift

__all__ = [
    "AUTO",
    "BASELINE",
    "Candidate",
    "Choice",
    "Request",
    "Result",
    "Run",
    "Score",
    "Settings",
    "StrategySpec",
    "Trained",
    "TransferData",
    "candidates_for",
    "choose",
    "cross_validate",
    "domain_shift",
    "fine_tune",
    "fold_indices",
    "fold_plan",
    "holdout",
    "prepare_model",
    "score_name",
    "train_candidate",
]
