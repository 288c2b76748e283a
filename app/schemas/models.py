from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from app.enums import Task, VersionKind
from app.schemas.common import MAX_INT32, RequestSchema, Schema
from app.schemas.datasets import ColumnRead


class RegisteredModelRead(Schema):
    name: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]
    tags: dict[str, str] = Field(default_factory=dict)
    description: str | None = None


class ModelRef(Schema):
    name: str
    version: int


class Signature(Schema):
    inputs: list[ColumnRead]
    classes: list[Any] | None
    target: str


class DatasetRef(Schema):
    id: str
    role: str = Field(
        description="`training` (the rows it was trained on) or `joint_source` (the source "
        "rows a joint fine-tune also trained on)."
    )
    name: str | None
    sha256: str | None = Field(description="sha256 of the dataset's bytes when it was used.")
    rows: int | None
    size_bytes: int | None


class LineageEntry(Schema):
    name: str
    version: int
    kind: VersionKind | None
    strategy: str | None
    job_id: str | None
    created_at: datetime | None
    datasets: list[DatasetRef]


class ModelVersionRead(Schema):
    name: str
    version: int
    created_at: datetime
    job_id: str | None
    kind: VersionKind
    strategy: str | None
    parent: ModelRef | None
    dataset_id: str
    task: Task
    signature: Signature
    architecture: dict[str, Any] = Field(
        description="How the model is built: `mlp` or `cnn`; `forest` for a target-only "
        "random forest (`trees`, `split_nodes`, `leaves`, `combine`) stored as tensors; or "
        "`ensemble` for a blend that strategy auto chose (`members`, their `candidates`, "
        "`weights`, `combine`), served as one model."
    )
    hyperparameters: dict[str, Any]
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    transfer_report: dict[str, Any] | None = Field(
        None,
        description="Fine-tuned versions: cross-validated score beside a target-only baseline "
        "(transfer_gain), negative_transfer, the source/target domain shift, decided_by, and "
        "the members of the delivered model (one candidate, or the blend auto chose).",
    )
    size_bytes: int
    sha256: str
    memory_bytes: int = Field(
        description="Memory the version takes once loaded for serving (parameters and buffers)."
    )
    aliases: list[str]
    created_by: str | None = Field(
        None, description="The API key whose job made this version (null with auth disabled)."
    )
    lineage: list[LineageEntry] = Field(
        description="This version, then its parent, grandparent and so on, each with the "
        "datasets it was trained on and their sha256, recorded when it was registered (so it "
        "holds after those datasets or versions are deleted)."
    )
    tags: dict[str, str] = Field(
        default_factory=dict, description="The job's tags at registration, then PATCH."
    )
    description: str | None = None


class AliasUpdate(RequestSchema):
    version: int = Field(ge=1, le=MAX_INT32, examples=[1])


class AliasRead(Schema):
    name: str
    alias: str
    version: int
    previous_version: int | None = Field(
        None, description="Where the alias pointed before this request (null: it was new)."
    )


class AliasChangeRead(Schema):
    """One change of an alias, from its history."""

    id: int = Field(description="Increases with every change; the `after` cursor of the list.")
    name: str
    alias: str
    action: Literal["set", "rollback", "delete"]
    previous_version: int | None = Field(description="null: the alias was created")
    version: int | None = Field(description="null: the alias was deleted")
    changed_at: datetime
    changed_by: str | None = Field(description="The API key that made the change.")
