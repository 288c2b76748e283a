"""Free-form tags (string → string) and a description on datasets, jobs, models and
versions: set when they are created or by PATCH, returned on every read, and filtered on in
lists with `?tag=key:value`.

The rules are in the schema itself (key pattern, value length, how many), so the OpenAPI
document states exactly what is accepted.
"""

import re
from typing import Annotated, Any

from pydantic import Field, StringConstraints

from app.schemas.common import RequestSchema

MAX_TAGS = 50
MAX_DESCRIPTION = 10_000
MAX_TAG_VALUE = 512
# No ':' in a key: `?tag=key:value` splits at the first one.
TAG_KEY_PATTERN = r"^[A-Za-z0-9_./-]{1,128}$"
TAG_FILTER_PATTERN = r"^[A-Za-z0-9_./-]{1,128}:[\s\S]{0,512}$"
_TAG_KEY = re.compile(TAG_KEY_PATTERN)

TagKey = Annotated[str, StringConstraints(pattern=TAG_KEY_PATTERN)]
TagValue = Annotated[str, StringConstraints(max_length=MAX_TAG_VALUE)]
# pydantic states key rules as patternProperties; without this, other keys would look valid.
_ONLY_THESE_KEYS: dict[str, Any] = {"additionalProperties": False}

Tags = Annotated[
    dict[TagKey, TagValue],
    Field(
        max_length=MAX_TAGS,
        description=f"Free-form labels, string to string: at most {MAX_TAGS}, keys of 1 to "
        "128 letters, digits or _./-, values of at most 512 characters. Lists filter on them "
        "with ?tag=key:value.",
        examples=[{"team": "vision", "ticket": "ML-42"}],
        json_schema_extra=_ONLY_THESE_KEYS,
    ),
]
Description = Annotated[
    str | None, Field(max_length=MAX_DESCRIPTION, description="Free text for people.")
]


def check_tag(key: str, value: str) -> None:
    """The rules of one tag, for values that do not pass through a schema (a list filter)."""
    if not _TAG_KEY.match(key):
        raise ValueError(
            f"tag key {key[:140]!r} is not valid; expected 1 to 128 letters, digits or _./-"
        )
    if len(value) > MAX_TAG_VALUE:
        raise ValueError(f"tag {key!r}: its value has {len(value)} characters, at most 512")


class MetadataPatch(RequestSchema):
    """A JSON merge patch (RFC 7396) of the metadata: a tag set to null is removed, others
    are added or replaced, tags not named are kept; `description: null` clears it. A
    resource holds at most 50 tags after the patch (422 too_many_tags)."""

    tags: (
        Annotated[
            dict[TagKey, TagValue | None],
            Field(max_length=MAX_TAGS, json_schema_extra=_ONLY_THESE_KEYS),
        ]
        | None
    ) = Field(None, examples=[{"stage": "approved", "ticket": None}])
    description: Description = None
