"""Shared schema pieces: the base class, list pages and the problem document."""

import types
from typing import Any, Generic, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Version numbers and sequence numbers are stored as 32-bit integers; larger values
# can only be typos, and would overflow the database driver.
MAX_INT32 = 2**31 - 1


class Schema(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def _numeric(annotation: Any) -> str | None:
    """'number' for int/float fields (optional or not), 'list of numbers' for lists of them."""
    if annotation in (int, float):
        return "number"
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        kinds = {_numeric(arg) for arg in get_args(annotation) if arg is not type(None)}
        return kinds.pop() if len(kinds) == 1 else None
    if origin is list and get_args(annotation) and get_args(annotation)[0] in (int, float):
        return "list of numbers"
    return None


class RequestSchema(BaseModel):
    # A misspelt field is an error, not a silently ignored default.
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, data: Any) -> Any:
        """Refuse true/false where a number is expected, as the schema does.

        pydantic's lax mode reads true as 1; a client that sent a boolean for a seed or a
        row number has a bug that a silent 1 would hide. Strict mode would refuse it too,
        but also the "2027-01-01T00:00:00Z" strings that JSON has for datetimes.
        """
        if not isinstance(data, dict):
            return data
        for name, field in cls.model_fields.items():
            kind = _numeric(field.annotation)
            value = data.get(field.alias or name)
            if kind == "number" and isinstance(value, bool):
                raise ValueError(f"{name} is {str(value).lower()}; expected a number")
            if (
                kind == "list of numbers"
                and isinstance(value, list)
                and any(isinstance(item, bool) for item in value)
            ):
                raise ValueError(f"{name} holds a boolean; expected numbers")
        return data


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
