"""`linear`: a target-only logistic (ridge) regression, stored as a one-layer torch model."""

from torch import nn

from app.ml.architectures import build_model
from app.ml.linear import LINEAR_ARCHITECTURE, fit_linear, linear_architecture
from app.ml.transfer.candidates import Run, Trained
from app.ml.transfer.registry import StrategySpec, register


def prepare(run: Run) -> nn.Module:
    """The linear model's shape; `train` replaces it with the fitted one."""
    width = int(run.x.reshape(len(run.x), -1).shape[1]) if len(run.x) else 1
    return build_model(LINEAR_ARCHITECTURE, width, run.data.output_dim)


def train(run: Run, model: nn.Module) -> Trained:
    x_train = run.x_train
    model = fit_linear(
        x_train,
        run.y_train,
        run.data.target_spec,
        regularisation=run.settings.linear_regularisation,
    )
    return Trained(
        model,
        run.evaluate(model),
        ["linear model fitted by scikit-learn (no epochs)"],
        architecture=linear_architecture(int(x_train.shape[1]), run.data.output_dim),
    )


SPEC = register(
    StrategySpec(
        name="linear",
        description="target-only logistic regression (ridge for regression) from "
        "scikit-learn on the target's own input scaling, stored as a one-layer model.",
        uses_source_weights=False,
        trains="a closed-form linear model",
        prepare=prepare,
        train=train,
        tabular_only=True,
        closed_form=True,
        simplicity=10,
        hyperparameters=("linear_regularisation",),
    )
)
