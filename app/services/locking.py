"""Row locks and upserts that let the database, not Python, settle concurrent writes.

On PostgreSQL a writer that checks something and then acts on it (is this dataset still
used? does this version exist?) locks the rows it checks: `FOR SHARE` for the one that
relies on a row staying, `FOR UPDATE` for the one that removes it, so one waits for the
other's commit and then reads the new state (READ COMMITTED gives each statement a fresh
snapshot). SQLite needs none of this: every writing session begins with `BEGIN IMMEDIATE`
(see app/db/session.py), so writers run one at a time, and SQLite ignores `FOR UPDATE`.
"""

from typing import Any, Literal, TypeVar

from sqlalchemy import Select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

SelectT = TypeVar("SelectT", bound=Select[*tuple[Any, ...]])


def lock_rows(query: SelectT, mode: Literal["share", "update"] | str) -> SelectT:
    """`query` holding its rows until commit: shared (others may share) or exclusive."""
    return query.with_for_update(read=mode == "share")


def needs_row_locks(session: Session) -> bool:
    """Whether locking a row does anything: not on SQLite, whose writers take turns."""
    return session.get_bind().dialect.name != "sqlite"


def insert_for(session: Session, model: type[Any]) -> Any:
    """An INSERT that can say ON CONFLICT, in the dialect of the session's database."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"upserts are not written for {dialect}")
