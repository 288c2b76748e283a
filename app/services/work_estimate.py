"""What a training job would cost, estimated from its request before it is queued.

Pure functions over the request, the dataset's metadata (rows, column dtypes, image shape) and,
for fine-tuning, the base version's architecture. `check` refuses (422 `work_too_large`) a job
over any of three limits (GRAFT_MAX_MODEL_PARAMETERS, GRAFT_MAX_ACTIVATION_BYTES,
GRAFT_MAX_TRAINING_STEPS):

- **parameters** of the model trained: exact for the architecture (the layers of
  app/ml/architectures.py). The input width is exact for images and numeric columns; a text or
  category column is one-hot encoded into at most min(rows, MAX_CATEGORIES) inputs. The output
  width is 1 for regression, else at most min(rows, MAX_CLASSES) classes (20 for an integer
  target whose task is inferred, 2 for booleans; fine-tuning: the base's classes plus at most
  one new class per target row). The runner enforces both caps once it has read the data
  (`check_fitted`, `check_class_count`), so the estimate bounds what training builds.
- **activation memory** of one training batch: rows in the batch (batch_size, at most the
  training rows; `joint` grows its batches with the source rows) x the values every layer
  outputs per row (MLP: input + hidden widths + output; CNN: C x H x W of the input and of each
  convolution's output, which runs at the block's resolution, H and W halving per block, then
  the dense widths) x 4 bytes x BACKWARD_FACTOR (3). What autograd saves for the backward pass
  is 1.0 to 2.9 times those values (measured with torch.autograd.graph.saved_tensors_hooks:
  a ReLU MLP 1.0, GELU 1.9, the CNN 1.7 and 2.7 with batch norm, dropout 2.9: a mask and the
  output per layer); the gradients the backward pass holds at a time add a layer or two.
- **optimizer steps**: epochs x ceil(training rows / batch_size) per fit, summed over the fits
  the job runs. A fine-tuning job first cross-validates its candidates (`auto`: every
  strategy, the transfer ones under both normalisations when `target_normalization` is
  `auto`) and the `scratch` baseline of its transfer report, folds x repeats fits each on the
  target rows less one fold, then trains the final model (`auto`: the most expensive candidate,
  on every target row). `joint` trains on the source rows too: its steps count its rows in
  batches of batch_size. `linear` takes no optimizer steps (scikit-learn fits it).

One module for every kind of job so that the three caps are estimated the same way for
each; the estimate is pure arithmetic and reads top to bottom.
"""

import math
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import pandas as pd

from app.config import Settings
from app.enums import Task
from app.errors import Invalid
from app.ml import transfer
from app.ml.errors import DataError
from app.ml.tabular import MAX_INTEGER_CLASSES
from app.schemas.jobs import CnnArchitecture, FineTuningCreate, SourceTrainingCreate

# Caps on what the dataset's metadata cannot tell; enforced by the runner once it reads the data.
MAX_CLASSES = 10_000
MAX_CATEGORIES = 1_000
BYTES_PER_VALUE = 4  # float32
BACKWARD_FACTOR = 3
_NUMERIC_DTYPES = {"int64", "float64", "bool"}


@dataclass(frozen=True)
class Limits:
    parameters: int = 50_000_000
    activation_bytes: int = 2 * 1024**3
    training_steps: int = 50_000_000

    @classmethod
    def from_settings(cls, settings: Settings) -> "Limits":
        return cls(
            settings.max_model_parameters,
            settings.max_activation_bytes,
            settings.max_training_steps,
        )


@dataclass(frozen=True)
class Estimate:
    parameters: int
    widths: str  # the model's input and output widths, as the detail shows them
    batch_rows: int
    values_per_row: int
    steps: int
    steps_how: str
    shrink: str  # what to change for a smaller model
    cross_validated: bool = False

    @property
    def activation_bytes(self) -> int:
        return self.batch_rows * self.values_per_row * BYTES_PER_VALUE * BACKWARD_FACTOR


# The model.


def mlp_parameters(input_dim: int, output_dim: int, hidden_layers: list[int]) -> int:
    """Σ (in + 1) x out over the Linear layers, the head included."""
    widths = [input_dim, *hidden_layers, output_dim]
    return sum((a + 1) * b for a, b in pairwise(widths))


def cnn_parameters(
    input_shape: list[int],
    output_dim: int,
    *,
    channels: list[int],
    hidden_layers: list[int],
    kernel_size: int = 3,
    batch_norm: bool = False,
) -> int:
    """Conv2d weights and biases (plus BatchNorm2d's scale and shift), then the dense layers."""
    total, c_in = 0, input_shape[0]
    for c_out in channels:
        total += c_in * c_out * kernel_size**2 + c_out + (2 * c_out if batch_norm else 0)
        c_in = c_out
    flat = channels[-1] * (input_shape[1] >> len(channels)) * (input_shape[2] >> len(channels))
    return total + mlp_parameters(flat, output_dim, hidden_layers)


def parameters(architecture: dict[str, Any], input_dim: int, output_dim: int) -> int:
    """Parameters of `build_model(architecture, input_dim, output_dim)`."""
    if architecture.get("type") == "cnn":
        return cnn_parameters(
            architecture["input_shape"],
            output_dim,
            channels=architecture["channels"],
            hidden_layers=architecture["hidden_layers"],
            kernel_size=architecture.get("kernel_size", 3),
            batch_norm=architecture.get("batch_norm", False),
        )
    return mlp_parameters(input_dim, output_dim, architecture["hidden_layers"])


def values_per_row(architecture: dict[str, Any], input_dim: int, output_dim: int) -> int:
    """Values the layers output for one row: the input, every block or layer, the head."""
    total = input_dim + sum(architecture["hidden_layers"]) + output_dim
    if architecture.get("type") == "cnn":
        _, height, width = architecture["input_shape"]
        for depth, c_out in enumerate(architecture["channels"]):
            total += c_out * (height >> depth) * (width >> depth)
    return total


# The data.


def train_rows(rows: int, validation_fraction: float) -> int:
    """Rows left for training after the validation split (training.split_indices)."""
    held = min(max(1, round(rows * validation_fraction)), rows - 1) if rows >= 2 else 0
    return rows - (held if validation_fraction > 0 else 0)


def fit_steps(epochs: int, rows: int, batch_size: int) -> int:
    return epochs * math.ceil(rows / batch_size)


def _image_shape(columns: list[dict[str, Any]]) -> list[int] | None:
    shape = next((c["shape"] for c in columns if c.get("shape") is not None), None)
    return None if shape is None else [int(side) for side in shape]


def _output_width(task: Task | None, dtype: str, rows: int) -> int:
    if task == Task.REGRESSION or (task is None and dtype == "float64"):
        return 1
    if dtype == "bool":
        return 2
    if task is None and dtype == "int64":  # classification only with few distinct values
        return min(rows, MAX_INTEGER_CLASSES)
    return min(rows, MAX_CLASSES)


def _shrink(architecture: dict[str, Any]) -> str:
    if architecture.get("type") == "cnn":
        return "fewer or narrower channels and hidden_layers"
    return "fewer or narrower hidden_layers"


# The estimates.


def source_training(
    request: SourceTrainingCreate, columns: list[dict[str, Any]], rows: int
) -> Estimate:
    """The work of a source-training request on a dataset with these columns and rows."""
    dtypes = {c["name"]: c["dtype"] for c in columns}
    architecture = request.architecture.model_dump()
    shape = _image_shape(columns)
    if shape is not None and isinstance(request.architecture, CnnArchitecture):
        architecture["input_shape"] = shape
        input_dim, note = math.prod(shape), ""
    else:
        target = request.target_column
        features = request.feature_columns or [c for c in dtypes if c != target]
        text = sum(dtypes.get(c) not in _NUMERIC_DTYPES for c in features)
        per_text = min(rows, MAX_CATEGORIES)
        input_dim = len(features) - text + text * per_text
        note = (
            f", {text:,} text column(s) at up to {per_text:,} one-hot values each" if text else ""
        )
    label = next((c for c in columns if c["name"] == request.target_column), {"dtype": "string"})
    output_dim = max(1, _output_width(request.task, label["dtype"], rows))
    hyper = request.hyperparameters
    n_train = train_rows(rows, hyper.validation_fraction)
    return Estimate(
        parameters=parameters(architecture, input_dim, output_dim),
        widths=f"input width {input_dim:,}{note}; output width up to {output_dim:,}",
        batch_rows=min(hyper.batch_size, n_train),
        values_per_row=values_per_row(architecture, input_dim, output_dim),
        steps=fit_steps(hyper.epochs, n_train, hyper.batch_size),
        steps_how=(
            f"{hyper.epochs:,} epochs x {math.ceil(n_train / hyper.batch_size):,} batches of "
            f"{hyper.batch_size:,} from {n_train:,} training rows"
        ),
        shrink=_shrink(architecture),
    )


def fine_tuning_candidates(
    strategy: str, normalization: str | None, *, joint_available: bool, tabular: bool = True
) -> list[tuple[str, str]]:
    """(strategy, normalisation) of every fit cross-validated, exactly as the plan in
    app/ml/transfer/plan.py runs them: the candidates and the scratch baseline."""
    norm = transfer.plan.resolve_normalization(strategy, normalization)
    candidates = transfer.candidates_for(
        strategy, norm, source_rows=joint_available, tabular=tabular
    )
    return [(c.strategy, c.normalization) for c in transfer.plan.scored_candidates(candidates)]


def fine_tuning(
    request: FineTuningCreate,
    architecture: dict[str, Any],
    task: str,
    rows: int,
    source_rows: int | None,
) -> Estimate:
    """The work of a fine-tuning request on `rows` target rows from a base version of this
    architecture and task; `source_rows` (None: unavailable) is what `joint` adds."""
    hyper = request.hyperparameters
    input_dim, base_out = int(architecture["input_dim"]), int(architecture["output_dim"])
    output_dim = base_out
    if task == Task.CLASSIFICATION:
        output_dim = max(base_out, min(MAX_CLASSES, base_out + rows))
    fits = fine_tuning_candidates(
        request.strategy, request.target_normalization, joint_available=source_rows is not None
    )
    # The final fit: auto's pick (any candidate) on every target row, else the strategy asked
    # for on the rows left after the validation split.
    final, n_final = fits, rows
    if request.strategy != transfer.AUTO:
        final = [fit for fit in fits if fit[0] == request.strategy][:1]
        n_final = train_rows(rows, hyper.validation_fraction)
    extra = source_rows or 0
    batch = hyper.batch_size

    def cost(name: str, n: int) -> tuple[int, int]:
        """(steps, batch rows) of one fit of strategy `name` on n target rows."""
        if name == "linear" or n < 1:
            return 0, 0
        if name == "joint":
            # Batches grow with the source rows, so the steps per epoch stay; the work does not.
            grown = batch * math.ceil((n + extra) / n)
            return fit_steps(hyper.epochs, n + extra, batch), min(grown, n + extra)
        return fit_steps(hyper.epochs, n, batch), min(batch, n)

    steps, batch_rows, how = 0, 0, ""
    if rows >= 4:  # fewer rows than cross-validation needs: no transfer report, no folds
        folds, repeats = transfer.fold_plan(rows, hyper.cv_folds, hyper.cv_repeats)
        n_fold = rows - rows // folds
        for name, _ in fits:
            fit, fit_batch = cost(name, n_fold)
            steps += folds * repeats * fit
            batch_rows = max(batch_rows, fit_batch)
        how = f"cross-validation of {len(fits)} fit(s) x {folds} folds x {repeats} repeat(s), "
    finals = [cost(name, n_final) for name, _ in final] or [(0, 0)]
    steps += max(fit for fit, _ in finals)
    batch_rows = max(batch_rows, *(fit_batch for _, fit_batch in finals))
    return Estimate(
        parameters=parameters(architecture, input_dim, output_dim),
        widths=f"input width {input_dim:,}; output width up to {output_dim:,}",
        batch_rows=batch_rows,
        values_per_row=values_per_row(architecture, input_dim, output_dim),
        steps=steps,
        steps_how=f"{how}{hyper.epochs:,} epochs each, on {rows:,} target rows"
        + (f" and {extra:,} source rows for joint" if extra and "joint" in dict(fits) else ""),
        shrink="a base model with fewer or narrower layers",
        cross_validated=bool(how),
    )


def check(estimate: Estimate, limits: Limits) -> None:
    """Invalid `work_too_large` naming the first quantity over its limit."""
    if estimate.parameters > limits.parameters:
        _refuse(
            f"the model would have {estimate.parameters:,} parameters ({estimate.widths}), over "
            f"the limit of {limits.parameters:,} (GRAFT_MAX_MODEL_PARAMETERS); use "
            f"{estimate.shrink}"
        )
    if estimate.activation_bytes > limits.activation_bytes:
        _refuse(
            f"a training batch would need about {estimate.activation_bytes:,} bytes of "
            f"activations ({estimate.batch_rows:,} rows x {estimate.values_per_row:,} values x "
            f"{BYTES_PER_VALUE} bytes x {BACKWARD_FACTOR} for the backward pass), over the limit "
            f"of {limits.activation_bytes:,} (GRAFT_MAX_ACTIVATION_BYTES); use a smaller "
            f"batch_size or {estimate.shrink}"
        )
    if estimate.steps > limits.training_steps:
        _refuse(
            f"training would take {estimate.steps:,} optimizer steps ({estimate.steps_how}), "
            f"over the limit of {limits.training_steps:,} (GRAFT_MAX_TRAINING_STEPS); use fewer "
            "epochs or a larger batch_size"
            + (
                ", or a named strategy, fewer cv_folds or cv_repeats"
                if estimate.cross_validated
                else ""
            )
        )


def _refuse(detail: str) -> None:
    raise Invalid("work_too_large", detail)


# Checks once the data is read (the runner).


def check_class_count(count: int) -> None:
    if count > MAX_CLASSES:
        raise DataError(
            f"the target has {count:,} classes, over the limit of {MAX_CLASSES:,}; a classifier "
            "needs far fewer (is the target an identifier, or a number to regress on with "
            'task "regression"?)',
            code="too_many_classes",
        )


def check_fitted(feature_spec: dict[str, Any], target_spec: dict[str, Any]) -> None:
    """The caps the estimate relied on, on the fitted preprocessing of a source-training job."""
    for column in feature_spec.get("columns", []):
        count = len(column.get("categories", ()))
        if count > MAX_CATEGORIES:
            raise DataError(
                f"column {column['name']!r} holds {count:,} distinct values, over the limit of "
                f"{MAX_CATEGORIES:,} for a text column (each value becomes one input); leave it "
                "out of feature_columns or group its values",
                code="too_many_categories",
            )
    if target_spec.get("task") == Task.CLASSIFICATION:
        check_class_count(len(target_spec["classes"]))


def merged_class_count(source_classes: list[Any], labels: pd.Series) -> int:
    """Classes of a model fine-tuned on `labels` from one with `source_classes` (a set union)."""
    if isinstance(labels.dtype, pd.CategoricalDtype):
        observed = labels.cat.categories.tolist()
    else:
        observed = labels.dropna().unique().tolist()
    return len(set(source_classes).union(observed))
