"""Shared schema pieces: the base class, list pages and the problem document."""

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

# Version numbers and sequence numbers are stored as 32-bit integers; larger values
# can only be typos, and would overflow the database driver.
MAX_INT32 = 2**31 - 1


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class RequestSchema(BaseModel):
    # A misspelt field is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid")


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class ProblemError(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details, as every 4xx/5xx response carries them."""

    type: str = Field(examples=["https://graft.dev/problems/dataset_not_found"])
    title: str = Field(examples=["Not found"])
    status: int = Field(examples=[404])
    detail: str = Field(examples=["no dataset with id 'ds_123'"])
    code: str = Field(examples=["dataset_not_found"])
    errors: list[ProblemError] | None = None
    instance: str | None = None

    model_config = ConfigDict(extra="allow")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting problem+json errors."""
    return {
        status: {"model": Problem, "content": {"application/problem+json": {}}}
        for status in statuses
    }
