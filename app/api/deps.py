"""Typed dependency aliases: routes ask for what they need by type."""

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Query, Request
from pydantic import StringConstraints
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.session import Database
from app.schemas.metadata import TAG_FILTER_PATTERN
from app.serving.cache import ModelCache


def get_database(request: Request) -> Database:
    database: Database = request.app.state.database
    return database


def get_session(request: Request) -> Iterator[Session]:
    """A writing unit of work: committed when the route returns, rolled back if it raises.

    Declared with `scope="function"` below, so the commit runs when the path operation
    returns and before the response is sent: a client that gets a 2xx can read its write on
    any connection, and a commit that fails becomes the route's error response (409 or 503,
    see app/api/problems.py) instead of a 2xx followed by a lost write.
    """
    with get_database(request).session_scope() as session:
        yield session


def get_read_session(request: Request) -> Iterator[Session]:
    """A read-only session, closed with the path operation: a streamed response holds none."""
    with get_database(request).read_scope() as session:
        yield session


# The lookups below read request state and do no I/O: `async def` keeps them on the event
# loop, where FastAPI would run a plain `def` dependency on a worker thread (a hand-off each).


async def get_key_id(request: Request) -> str | None:
    """The id of the API key the request came with (None when auth is disabled)."""
    key_id: str | None = request.scope.get("graft.key_id")
    return key_id


async def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_model_cache(request: Request) -> ModelCache:
    cache: ModelCache = request.app.state.model_cache
    return cache


SessionDep = Annotated[Session, Depends(get_session, scope="function")]
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
KeyIdDep = Annotated[str | None, Depends(get_key_id)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
ModelCacheDep = Annotated[ModelCache, Depends(get_model_cache)]
LimitQuery = Annotated[int, Query(ge=1, le=200, description="Page size.")]
TagQuery = Annotated[
    list[Annotated[str, StringConstraints(pattern=TAG_FILTER_PATTERN)]] | None,
    Query(
        alias="tag",
        max_length=20,
        description="Only items with this tag, as key:value; repeat for several (all must hold).",
    ),
]
AfterQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=200,
        description="Cursor: the id of the last item of the previous page (404 "
        "cursor_not_found when no item has it).",
    ),
]
