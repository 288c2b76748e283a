"""Job requests and responses: every kind's request model with its bounds, the job and
event read models.

One module because the request models share their validators and bounded field types
(architectures, hyperparameters, references to versions); long because every bound is
stated here, in the schema, where the OpenAPI document reads it.
"""

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, StrictBool, model_validator

from app.enums import EventType, JobKind, JobStatus, TargetNormalization, Task
from app.ml.transfer import registry as strategies
from app.schemas.common import MAX_INT32, RequestSchema, Schema
from app.schemas.metadata import Description, Tags

MODEL_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
ALIAS_PATTERN = r"^[A-Za-z][A-Za-z0-9_-]{0,63}$"
# Bounds on what one request may name, so that checking it stays cheap (safe on a network).
MAX_FEATURE_COLUMNS = 10_000
FeatureName = Annotated[str, Field(max_length=200)]


def _items_between(low: int, high: int) -> dict[str, Any]:
    # The range is checked by a validator whose message names the index; the schema states
    # it too, so that what the document allows is what is accepted.
    return {"items": {"type": "integer", "minimum": low, "maximum": high}}


class Architecture(RequestSchema):
    type: Literal["mlp"] = "mlp"
    hidden_layers: list[int] = Field(
        default_factory=lambda: [64, 64],
        max_length=16,
        description="Width of each hidden layer.",
        json_schema_extra=_items_between(1, 4096),
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu", "silu"] = "relu"

    @model_validator(mode="after")
    def _widths_in_range(self) -> "Architecture":
        for index, width in enumerate(self.hidden_layers):
            if not 1 <= width <= 4096:
                raise ValueError(f"hidden_layers[{index}] is {width}; expected 1 to 4096")
        return self


class CnnArchitecture(RequestSchema):
    """A small CNN for image datasets: the trunk is the convolutional blocks and dense layers."""

    type: Literal["cnn"]
    channels: list[int] = Field(
        default_factory=lambda: [16, 32],
        min_length=1,
        max_length=8,
        description="Output channels of each convolutional block; each block halves H and W.",
        json_schema_extra=_items_between(1, 512),
    )
    kernel_size: int = Field(3, ge=1, le=9)
    hidden_layers: list[int] = Field(
        default_factory=lambda: [64],
        max_length=16,
        description="Dense layers after the blocks.",
        json_schema_extra=_items_between(1, 4096),
    )
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    activation: Literal["relu", "gelu", "tanh", "sigmoid", "leaky_relu", "silu"] = "relu"
    batch_norm: StrictBool = Field(False, description="BatchNorm2d after each convolution.")

    @model_validator(mode="after")
    def _sizes_in_range(self) -> "CnnArchitecture":
        for index, size in enumerate(self.channels):
            if not 1 <= size <= 512:
                raise ValueError(f"channels[{index}] is {size}; expected 1 to 512")
        for index, width in enumerate(self.hidden_layers):
            if not 1 <= width <= 4096:
                raise ValueError(f"hidden_layers[{index}] is {width}; expected 1 to 4096")
        return self


def _parse_architecture(value: Any) -> Any:
    # Picks the class by "type" before validating, so that error locations read
    # ["architecture", "activation"] rather than naming a union member. A missing "type"
    # means the MLP, as in requests written before the CNN existed.
    if not isinstance(value, dict):
        return value
    kind = value.get("type", "mlp")
    if kind not in ("mlp", "cnn"):
        raise ValueError(f"unknown architecture type {kind!r}; expected 'mlp' or 'cnn'")
    model = CnnArchitecture if kind == "cnn" else Architecture
    return model.model_validate(value)


AnyArchitecture = Annotated[Architecture | CnnArchitecture, BeforeValidator(_parse_architecture)]


class Hyperparameters(RequestSchema):
    epochs: int = Field(100, ge=1, le=10_000)
    batch_size: int = Field(32, ge=1, le=65_536)
    learning_rate: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0, le=1.0)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    validation_fraction: float = Field(0.2, ge=0.0, le=0.5)
    early_stopping_patience: int | None = Field(
        None, ge=1, le=10_000, description="Stop after this many epochs without a better val_loss."
    )
    seed: int = Field(0, ge=0, le=2**32 - 1)


MAX_TIMEOUT_SECONDS = 7 * 86_400


def _timeout_field() -> Any:
    return Field(
        None,
        ge=1,
        le=MAX_TIMEOUT_SECONDS,
        description="Time limit of one run of the job, in seconds; past it the job fails "
        "with code `timeout`. Default: the server's GRAFT_JOB_TIMEOUT_SECONDS.",
    )


class FineTuningHyperparameters(Hyperparameters):
    """The training budget plus the knobs of the transfer strategies (issue 5)."""

    lp_epochs_fraction: float = Field(
        0.5, gt=0.0, le=1.0, description="lp_ft: share of the epochs spent on the linear probe."
    )
    ft_lr_factor: float = Field(
        0.1, gt=0.0, le=1.0, description="lp_ft: fine-tuning learning rate = learning_rate * this."
    )
    l2_sp_alpha: float = Field(
        0.01, ge=0.0, le=100.0, description="l2_sp: weight of ||w - w_source||² (transferred)."
    )
    l2_sp_beta: float = Field(
        0.0, ge=0.0, le=100.0, description="l2_sp: weight of ||w||² on new (head) weights."
    )
    layer_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="parameter, l2_sp: the k-th layer below the head learns at lr * decay^k.",
    )
    joint_target_weight: float | None = Field(
        None,
        gt=0.0,
        le=10_000.0,
        description="joint: loss weight of a target row (a source row weighs 1); "
        "default: source rows / target rows, so both sets weigh the same.",
    )
    linear_regularisation: float = Field(
        1.0, gt=0.0, le=1e6, description="linear: ridge alpha, or 1/C of the logistic regression."
    )
    cv_folds: int = Field(
        4, ge=2, le=10, description="Folds of the cross-validation behind auto and the report."
    )
    cv_repeats: int | None = Field(
        None,
        ge=1,
        le=10,
        description=(
            "Repeats of the k-fold; default 5 below 40 rows, 3 below 60, 2 below 200, else 1."
        ),
    )


WebhookUrl = Annotated[
    str | None,
    Field(
        max_length=2000,
        description="Called (POST, JSON, signed with GRAFT_WEBHOOK_SECRET in Graft-Signature) "
        "when the job ends; retried with backoff. Private and local addresses are refused "
        "unless GRAFT_WEBHOOK_ALLOW_PRIVATE.",
        examples=["https://ci.example.com/hooks/graft"],
    ),
]


class WebhookDeliveryRead(Schema):
    id: int
    event: str
    status: Literal["pending", "delivering", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime | None
    delivered_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    attempt_log: list[dict[str, Any]] = Field(
        description="Every attempt: at, status_code, error, duration_ms (the last 20)."
    )


class SourceTrainingCreate(RequestSchema):
    dataset_id: str
    target_column: str
    model_name: str = Field(pattern=MODEL_NAME_PATTERN)
    tags: Tags = Field(
        default_factory=dict,
        description="The job's tags; the version it registers starts with them.",
    )
    description: Description = None
    webhook_url: WebhookUrl = None
    feature_columns: list[FeatureName] | None = Field(
        None,
        min_length=1,
        max_length=MAX_FEATURE_COLUMNS,
        description=f"Default: every column but the target. At most {MAX_FEATURE_COLUMNS:,} "
        "names, each at most 200 characters.",
    )
    task: Task | None = Field(None, description="Default: inferred from the target column.")
    architecture: AnyArchitecture = Field(
        default_factory=Architecture,
        description='Default: an MLP for a table, a CNN (`{"type": "cnn"}`) for images.',
    )
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    timeout_seconds: int | None = _timeout_field()

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "dataset_id": "ds_replace_with_your_dataset_id",
                    "target_column": "target",
                    "model_name": "iris-source",
                    "architecture": {"type": "mlp", "hidden_layers": [10, 10]},
                    "hyperparameters": {"epochs": 100, "learning_rate": 0.01, "seed": 0},
                }
            ]
        }
    }


class BaseModelRef(RequestSchema):
    """A version by number, by alias, or neither (the version `predict` would use); with
    both, the alias must point at that version (409 alias_mismatch otherwise)."""

    name: str = Field(min_length=1, max_length=200)
    version: int | None = Field(None, ge=1, le=MAX_INT32)
    alias: str | None = Field(None, pattern=ALIAS_PATTERN)


def _known_strategy(name: str) -> str:
    strategies.get(name) if name != strategies.AUTO else None  # ValueError names the known ones
    return name


def _strategy_schema(schema: dict[str, Any]) -> None:
    # Filled in when the document is generated, from the registry as it is then.
    schema["enum"] = strategies.names(with_auto=True)
    schema["description"] = "How the source model is transferred:\n\n" + strategies.describe()


StrategyName = Annotated[
    str, AfterValidator(_known_strategy), Field(json_schema_extra=_strategy_schema)
]


class FineTuningCreate(RequestSchema):
    base_model: BaseModelRef
    dataset_id: str
    target_column: str
    model_name: str = Field(pattern=MODEL_NAME_PATTERN)
    tags: Tags = Field(
        default_factory=dict,
        description="The job's tags; the version it registers starts with them.",
    )
    description: Description = None
    webhook_url: WebhookUrl = None
    strategy: StrategyName
    target_normalization: TargetNormalization | None = Field(
        None,
        description="Standardise the target's inputs with the source's statistics (source), "
        "refit them on the target (target), or let cross-validation choose (auto). Default: "
        "auto with strategy auto, else source. Target-only strategies (scratch, structure, "
        "linear) always read the target's own scaling.",
    )
    hyperparameters: FineTuningHyperparameters = Field(default_factory=FineTuningHyperparameters)
    timeout_seconds: int | None = _timeout_field()

    @model_validator(mode="before")
    @classmethod
    def _default_normalization(cls, data: Any) -> Any:
        # auto searches the scaling too unless the request fixed one.
        if isinstance(data, dict) and data.get("target_normalization") is None:
            strategy = data.get("strategy")
            default = "auto" if strategy == strategies.AUTO else "source"
            data = {**data, "target_normalization": default}
        return data

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "base_model": {"name": "iris-source", "version": 1},
                    "dataset_id": "ds_replace_with_your_dataset_id",
                    "target_column": "target",
                    "model_name": "iris-target",
                    "strategy": "feature",
                    "hyperparameters": {"epochs": 50, "learning_rate": 0.01},
                }
            ]
        }
    }


# Columns a batch prediction copies from its input: a few ids, not the whole row.
MAX_ID_COLUMNS = 64


class BatchPredictionCreate(RequestSchema):
    """Predictions for every row of a stored dataset, written to a new dataset."""

    model: BaseModelRef = Field(
        description="The version that predicts: by number, by alias, or neither (the version "
        "`predict` would use). An alias is read when the job is queued and the version pinned."
    )
    dataset_id: str = Field(description="The rows to predict; they need the model's inputs.")
    id_columns: list[FeatureName] = Field(
        default_factory=list,
        max_length=MAX_ID_COLUMNS,
        description="Input columns copied into the result, first and in this order, so each "
        "prediction can be joined back to its row.",
    )
    output_format: Literal["csv", "jsonl"] = Field(
        "csv", description="The result dataset's file format."
    )
    probabilities: StrictBool = Field(
        True,
        description="Classification: add one `probability_<class>` column per class.",
    )
    chunk_rows: int = Field(
        10_000,
        ge=1,
        le=100_000,
        description="Rows decoded, predicted and written at a time; memory follows this, "
        "not the dataset's size.",
    )
    result_name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The result dataset's name. Default: `<dataset name> predictions "
        "(<model> v<version>)`.",
    )
    tags: Tags = Field(default_factory=dict, description="The job's tags.")
    description: Description = None
    webhook_url: WebhookUrl = None
    timeout_seconds: int | None = _timeout_field()

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "model": {"name": "iris-target", "alias": "production"},
                    "dataset_id": "ds_replace_with_your_dataset_id",
                    "id_columns": ["id"],
                }
            ]
        }
    }


MAX_EVALUATED_VERSIONS = 20


class EvaluationCreate(RequestSchema):
    """Score versions on a labelled dataset; the scores are stored with each version."""

    models: list[BaseModelRef] = Field(
        min_length=1,
        max_length=MAX_EVALUATED_VERSIONS,
        description="The versions to score, each by number, alias or neither; pinned when "
        "the job is queued.",
    )
    dataset_id: str = Field(description="Labelled rows with every scored version's inputs.")
    target_column: str | None = Field(
        None,
        max_length=200,
        description="The column holding the true values. Default: the target each version "
        "was trained on.",
    )
    include_base: StrictBool = Field(
        False,
        description="Also score the base version of every fine-tuned version on the same "
        "rows, so a fine-tune can be compared with what it started from.",
    )
    chunk_rows: int = Field(
        10_000, ge=1, le=100_000, description="Rows decoded and scored at a time."
    )
    tags: Tags = Field(default_factory=dict, description="The job's tags.")
    description: Description = None
    webhook_url: WebhookUrl = None
    timeout_seconds: int | None = _timeout_field()

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "models": [{"name": "iris-target", "version": 1}],
                    "dataset_id": "ds_replace_with_your_dataset_id",
                    "include_base": True,
                }
            ]
        }
    }


class Progress(Schema):
    epoch: int = 0
    epochs: int = 0
    elapsed_seconds: float | None = Field(
        None, description="Time the current run has taken so far (null while queued)."
    )
    eta_seconds: float | None = Field(
        None,
        description="Estimated seconds until the job finishes, from the mean epoch time so "
        "far (an upper bound with early stopping); null until the first epoch ends.",
    )
    estimated_finish_at: datetime | None = Field(
        None, description="When the job is expected to finish, at the same estimate."
    )
    rows_done: int | None = Field(
        None, description="Batch prediction and evaluation: rows processed so far."
    )
    rows_total: int | None = Field(
        None, description="Batch prediction and evaluation: rows to process."
    )


class JobResult(Schema):
    model_name: str
    version: int


class JobError(Schema):
    code: str
    message: str


class PinnedModel(Schema):
    name: str
    version: int


class JobRead(Schema):
    id: str
    kind: JobKind
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    request: dict[str, Any]
    progress: Progress
    metrics: dict[str, Any] | None
    result: JobResult | None
    error: JobError | None
    base_model: PinnedModel | None = Field(
        None,
        description="The exact version a fine-tuning job builds on, or a batch prediction "
        "or evaluation uses (its first), pinned when queued.",
    )
    result_dataset_id: str | None = Field(
        None, description="Batch prediction: the dataset holding the predictions, once done."
    )
    attempts: int
    cancel_requested: bool
    created_by: str | None = Field(
        None, description="The API key that submitted the job (null with auth disabled)."
    )
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    webhook_url: str | None = None
    webhook_deliveries: list[WebhookDeliveryRead] | None = Field(
        None,
        description="On GET /v1/jobs/{id} of a job with a webhook_url: its deliveries and "
        "their attempts.",
    )


class EventRead(Schema):
    seq: int
    created_at: datetime
    type: EventType
    message: str
    data: dict[str, Any] | None
