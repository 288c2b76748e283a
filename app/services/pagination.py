"""Cursor pagination, newest first, shared by every list endpoint."""

from typing import Any, TypeVar

from sqlalchemy import Select, and_, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.errors import NotFound

R = TypeVar("R")


def paginate(
    session: Session,
    query: Select[R],
    *,
    created_at: InstrumentedAttribute[Any],
    key: InstrumentedAttribute[Any],
    limit: int,
    after: Any | None,
) -> tuple[list[R], bool]:
    """Rows older than the cursor row `after`, newest first; returns (rows, has_more).

    A cursor naming no row is 404 cursor_not_found: the request is well formed (any id may
    be a cursor), what it points at does not exist, as for an unknown id in a path.
    """
    if after is not None:
        cursor = session.execute(select(created_at, key).where(key == after)).one_or_none()
        if cursor is None:
            raise NotFound(
                "cursor_not_found",
                f"'after' is {after!r}, which is not an id in this list (deleted since the "
                "previous page?); start again without 'after'",
            )
        query = query.where(
            or_(created_at < cursor[0], and_(created_at == cursor[0], key < cursor[1]))
        )
    rows = list(session.scalars(query.order_by(created_at.desc(), key.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit
