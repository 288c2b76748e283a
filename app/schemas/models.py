from datetime import datetime
from typing import Any

from pydantic import Field

from app.enums import Strategy, Task, VersionKind
from app.schemas.common import MAX_INT32, RequestSchema, Schema
from app.schemas.datasets import ColumnRead


class RegisteredModelRead(Schema):
    name: str
    created_at: datetime
    latest_version: int | None
    aliases: dict[str, int]


class ModelRef(Schema):
    name: str
    version: int


class Signature(Schema):
    inputs: list[ColumnRead]
    classes: list[Any] | None
    target: str


class ModelVersionRead(Schema):
    name: str
    version: int
    created_at: datetime
    job_id: str | None
    kind: VersionKind
    strategy: Strategy | None
    parent: ModelRef | None
    dataset_id: str
    task: Task
    signature: Signature
    architecture: dict[str, Any]
    hyperparameters: dict[str, Any]
    preprocessing: dict[str, Any]
    metrics: dict[str, Any]
    transfer_report: dict[str, Any] | None = Field(
        None,
        description="Fine-tuned versions: cross-validated score beside a target-only baseline "
        "(transfer_gain), negative_transfer, and the source/target domain shift.",
    )
    size_bytes: int
    sha256: str
    memory_bytes: int = Field(
        description="Memory the version takes once loaded for serving (parameters and buffers)."
    )
    aliases: list[str]


class AliasUpdate(RequestSchema):
    version: int = Field(ge=1, le=MAX_INT32, examples=[1])


class AliasRead(Schema):
    name: str
    alias: str
    version: int
