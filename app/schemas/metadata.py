"""Free-form tags (string → string) and a description on datasets, jobs, models and
versions: set when they are created or by PATCH, returned on every read, and filtered on in
lists with `?tag=key:value`."""

import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field

from app.schemas.common import RequestSchema

MAX_TAGS = 50
MAX_DESCRIPTION = 10_000
TAG_KEY_PATTERN = r"^[A-Za-z0-9_.:/-]{1,128}$"
_TAG_KEY = re.compile(TAG_KEY_PATTERN)
MAX_TAG_VALUE = 512


def check_tags(tags: dict[str, Any]) -> dict[str, Any]:
    """Keys of letters, digits and `_.:/-` (at most 128), values of at most 512 characters."""
    for key, value in tags.items():
        if not _TAG_KEY.match(key):
            raise ValueError(
                f"tag key {key[:140]!r} is not valid; expected 1 to 128 letters, digits or _.:/-"
            )
        if isinstance(value, str) and len(value) > MAX_TAG_VALUE:
            raise ValueError(f"tag {key!r}: its value has {len(value)} characters, at most 512")
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags; at most {MAX_TAGS}")
    return tags


Tags = Annotated[
    dict[str, str],
    AfterValidator(check_tags),
    Field(
        description=f"Free-form labels, string to string (at most {MAX_TAGS}); lists filter "
        "on them with ?tag=key:value.",
        examples=[{"team": "vision", "ticket": "ML-42"}],
    ),
]
Description = Annotated[
    str | None, Field(max_length=MAX_DESCRIPTION, description="Free text for people.")
]


class MetadataPatch(RequestSchema):
    """A JSON merge patch (RFC 7396) of the metadata: a tag set to null is removed, others
    are added or replaced, tags not named are kept; `description: null` clears it."""

    tags: Annotated[dict[str, str | None], AfterValidator(check_tags)] | None = Field(
        None, examples=[{"stage": "approved", "ticket": None}]
    )
    description: Description = None
