"""Which version a request means: by number, by alias, else `production`, else the latest.

`resolve` is the ORM path every route and job uses. Predictions resolve on every request,
so they go through `RegistryView` (answers remembered until the registry changes) and, on a
miss, `VersionLookup`: the same three questions as raw SQL on an index each. It stays because
it is measured: on SQLite it reads on a plain driver connection per thread in microseconds,
where a session costs a pool checkout and ORM set-up (see README, serving); the test
tests/services/test_version_lookup.py holds it to the ORM path's answers."""

import threading
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from app.db import changes
from app.db.models import (
    ModelAlias,
    ModelVersion,
)
from app.db.session import Database
from app.errors import NotFound
from app.services.registry.aliases import DEFAULT_ALIAS, check_alias_target
from app.services.registry.models import get_model, latest_version
from app.services.registry.versions import get_version


def resolve(
    session: Session, name: str, *, version: int | None = None, alias: str | None = None
) -> ModelVersion:
    """The version asked for: by number, by alias, else `production`, else the latest.

    Both a number and an alias is a pinned read: the alias must point at that version
    (409 alias_mismatch otherwise), so a client can use an alias and be sure it did not
    move under it.
    """
    if version is not None and alias is not None:
        found = resolve(session, name, alias=alias)
        check_alias_target(name, alias, found.version, version)
        return found
    if version is not None:
        return get_version(session, name, version)
    if alias is not None:
        target = session.scalar(
            select(ModelAlias.version).where(
                ModelAlias.model_name == name, ModelAlias.alias == alias
            )
        )
        if target is None:
            get_model(session, name)
            raise NotFound("alias_not_found", f"model {name!r} has no alias {alias!r}")
        return get_version(session, name, target)
    target = session.scalar(
        select(ModelAlias.version).where(
            ModelAlias.model_name == name, ModelAlias.alias == DEFAULT_ALIAS
        )
    )
    if target is None:
        target = latest_version(session, name)
    if target is None:
        get_model(session, name)
        raise NotFound("version_not_found", f"model {name!r} has no versions yet")
    return get_version(session, name, target)


# One statement each, every lookup on an index: the model_versions (model_name, version)
# unique constraint and the model_aliases primary key. They run only when the registry view
# below has no answer: after a registry change, or for a name not asked for since.
_BY_NUMBER = text(
    "SELECT id, version FROM model_versions WHERE model_name = :name AND version = :version"
)
_BY_ALIAS = text(
    "SELECT v.id, v.version FROM model_aliases AS a JOIN model_versions AS v"
    " ON v.model_name = a.model_name AND v.version = a.version"
    " WHERE a.model_name = :name AND a.alias = :alias"
)
_BY_DEFAULT = text(
    "SELECT id, version FROM model_versions WHERE model_name = :name AND version = COALESCE("
    "(SELECT version FROM model_aliases WHERE model_name = :name AND alias = :alias),"
    " (SELECT MAX(version) FROM model_versions WHERE model_name = :name))"
)


class VersionLookup:
    """The one read a prediction may make: (name, version | alias | default) -> (id, number).

    On SQLite it runs on a plain driver connection per thread, in autocommit mode, so each
    read sees the newest commit and costs microseconds; elsewhere it goes through a pooled
    SQLAlchemy connection.
    """

    def __init__(self, database: Database) -> None:
        self._engine = database.engine
        self.is_sqlite = self._engine.dialect.name == "sqlite"
        self._local = threading.local()
        self._opened: list[Any] = []
        self._lock = threading.Lock()

    def find(self, name: str, version: int | None, alias: str | None) -> tuple[str, int] | None:
        if version is not None:
            statement, params = _BY_NUMBER, {"name": name, "version": version}
        elif alias is not None:
            statement, params = _BY_ALIAS, {"name": name, "alias": alias}
        else:
            statement = _BY_DEFAULT
            params = {"name": name, "alias": DEFAULT_ALIAS}
        if self.is_sqlite:
            row = self._sqlite().execute(statement.text, params).fetchone()
        else:
            with self._engine.connect() as connection:
                row = connection.execute(statement, params).first()
        return None if row is None else (str(row[0]), int(row[1]))

    def _sqlite(self) -> Any:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # Through the engine so the connect-time PRAGMAs (WAL, busy timeout) apply;
            # detached so it does not hold one of the pool's connections.
            pooled = self._engine.raw_connection()
            connection = pooled.driver_connection
            pooled.detach()
            self._local.connection = connection
            with self._lock:
                self._opened.append(pooled)
        return connection

    def close(self) -> None:
        with self._lock:
            for pooled in self._opened:
                pooled.close()
            self._opened.clear()
        self._local = threading.local()


# Distinct (name, version | alias | default) answers kept; beyond it the view starts again.
MAX_REMEMBERED_RESOLUTIONS = 10_000


class RegistryView:
    """What names, numbers and aliases resolve to, remembered until the registry changes.

    In steady state a prediction reads no database: every commit that adds or deletes a
    version or moves an alias announces a `registry` change (app/db/changes.py), which this
    process sees before its next request, and the view starts again. A lookup that was
    already reading when the change came is not remembered (its answer may be the old one).
    """

    def __init__(self, database: Database) -> None:
        self._changes = changes.ChangeWatcher(database.url, changes.REGISTRY)
        self._answers: dict[tuple[str, int | None, str | None], tuple[str, int]] = {}
        # Bumped at every start-again: a lookup begun under an older generation is not kept.
        self.generation = 0

    def get(self, name: str, version: int | None, alias: str | None) -> tuple[str, int] | None:
        if self._changes.changed():
            self._changes.acknowledge()
            self._answers = {}
            self.generation += 1
        return self._answers.get((name, version, alias))

    def remember(
        self,
        generation: int,
        key: tuple[str, int | None, str | None],
        found: tuple[str, int],
    ) -> None:
        if generation != self.generation:
            return
        if len(self._answers) >= MAX_REMEMBERED_RESOLUTIONS:
            self._answers = {}
        self._answers[key] = found

    def forget(self) -> None:
        """Start again at the next lookup (this process changed the registry)."""
        self._changes.invalidate()

    def close(self) -> None:
        self._changes.close()
