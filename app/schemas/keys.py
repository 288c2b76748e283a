from datetime import datetime
from typing import Literal

from pydantic import Field

from app.schemas.common import RequestSchema, Schema

Scope = Literal["read", "predict", "train", "admin"]


class KeyCreate(RequestSchema):
    name: str = Field(min_length=1, max_length=200, examples=["fraud-scoring app"])
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=4,
        examples=[["predict"]],
        description="read: GET routes; predict: predictions; train: uploads, jobs, registry "
        "writes; admin: everything, including keys.",
    )
    expires_at: datetime | None = Field(
        None, description="When the key stops working (RFC 3339, with a time zone)."
    )


class KeyRead(Schema):
    id: str
    name: str
    scopes: list[str]
    prefix: str = Field(description="The secret's first characters, to tell keys apart.")
    created_at: datetime
    created_by: str | None
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="Recorded at most once a minute.")
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    secret: str = Field(description="The key itself: shown only in this response.")
