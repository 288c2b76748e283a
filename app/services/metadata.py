"""Tags and descriptions: merge patches and list filters, the same for every resource."""

from typing import Any

from sqlalchemy.orm import InstrumentedAttribute

from app.errors import Invalid
from app.schemas.metadata import MAX_TAGS, MetadataPatch, check_tag


def apply(row: Any, patch: MetadataPatch) -> None:
    """Merge `patch` into the row's tags and description (the caller commits)."""
    if patch.tags is not None:
        merged = dict(row.tags or {})
        for key, value in patch.tags.items():
            if value is None:
                merged.pop(key, None)
            else:
                merged[key] = value
        if len(merged) > MAX_TAGS:
            raise Invalid(
                "too_many_tags", f"the patch would leave {len(merged)} tags; at most {MAX_TAGS}"
            )
        row.tags = merged
    if "description" in patch.model_fields_set:
        row.description = patch.description


def filters(column: InstrumentedAttribute[Any], tag_filters: list[str]) -> list[Any]:
    """SQL conditions for `?tag=key:value` (repeatable: every one must hold).

    The condition reads the row's JSON tags, so a filtered page walks the list's index
    until it has found a page of matching rows.
    """
    conditions = []
    for text in tag_filters:
        key, sep, value = text.partition(":")
        if not sep:
            raise Invalid("invalid_tag_filter", f"tag filter {text!r}: expected key:value")
        try:
            check_tag(key, value)
        except ValueError as exc:
            raise Invalid("invalid_tag_filter", f"tag filter {text!r}: {exc}") from exc
        conditions.append(column[key].as_string() == value)
    return conditions
