"""Aliases: names that point at a version, with their history (who moved them, from which
version) and rollback."""

import re

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import changes
from app.db.models import (
    AliasChange,
    ModelAlias,
    ModelVersion,
)
from app.errors import Conflict, Invalid, NotFound
from app.ids import utcnow
from app.schemas.jobs import ALIAS_PATTERN
from app.services.locking import insert_for
from app.services.registry.models import get_model, lock_model
from app.services.registry.versions import get_version

DEFAULT_ALIAS = "production"


def validate_alias_name(alias: str) -> None:
    if not re.match(ALIAS_PATTERN, alias):
        raise Invalid(
            "invalid_alias",
            f"alias {alias!r} is not valid; expected a letter then up to 63 letters, digits, "
            "'_' or '-'",
        )


def _alias_target(session: Session, name: str, alias: str) -> int | None:
    return session.scalar(
        select(ModelAlias.version).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
    )


def _record(
    session: Session,
    name: str,
    alias: str,
    action: str,
    before: int | None,
    after: int | None,
    by: str | None,
) -> None:
    session.add(
        AliasChange(
            model_name=name,
            alias=alias,
            action=action,
            previous_version=before,
            version=after,
            changed_at=utcnow(),
            changed_by=by,
        )
    )
    changes.mark(session, changes.REGISTRY)


def set_alias(
    session: Session,
    name: str,
    alias: str,
    version: int,
    *,
    changed_by: str | None = None,
    action: str = "set",
) -> tuple[ModelAlias, int | None]:
    """Point `alias` at `version`, creating or moving it; returns it and its previous
    target. The change is kept in the alias's history (a PUT to where it already points
    changes nothing and records nothing).

    The version's row is held (shared) until the commit, so a concurrent delete of that
    version waits and then sees the alias.
    """
    lock_model(session, name)
    get_version(session, name, version, lock="share")
    before = _alias_target(session, name, alias)
    now = utcnow()
    if before != version:
        session.execute(
            insert_for(session, ModelAlias)
            .values(model_name=name, alias=alias, version=version, updated_at=now)
            .on_conflict_do_update(
                index_elements=["model_name", "alias"], set_={"version": version, "updated_at": now}
            )
        )
        _record(session, name, alias, action, before, version, changed_by)
    return ModelAlias(model_name=name, alias=alias, version=version, updated_at=now), before


def delete_alias(session: Session, name: str, alias: str, *, changed_by: str | None = None) -> None:
    lock_model(session, name)
    before = _alias_target(session, name, alias)
    if before is None:
        raise NotFound("alias_not_found", f"model {name!r} has no alias {alias!r}")
    session.execute(
        delete(ModelAlias).where(ModelAlias.model_name == name, ModelAlias.alias == alias)
    )
    _record(session, name, alias, "delete", before, None, changed_by)


def rollback_alias(
    session: Session, name: str, alias: str, *, changed_by: str | None = None
) -> tuple[ModelAlias, int | None]:
    """Move the alias back to the target its last change replaced. A rollback is itself a
    change, so a second one goes forward again (like `cd -`)."""
    lock_model(session, name)
    current = _alias_target(session, name, alias)
    if current is None:
        raise NotFound("alias_not_found", f"model {name!r} has no alias {alias!r}")
    last = session.scalar(
        select(AliasChange)
        .where(AliasChange.model_name == name, AliasChange.alias == alias)
        .order_by(AliasChange.id.desc())
        .limit(1)
    )
    if last is None or last.previous_version is None or last.version != current:
        raise Conflict(
            "no_previous_version",
            f"alias {alias!r} of model {name!r} has pointed at version {current} since it was "
            "created: there is no earlier target to go back to",
        )
    previous = last.previous_version
    exists_still = session.scalar(
        select(ModelVersion.id).where(
            ModelVersion.model_name == name, ModelVersion.version == previous
        )
    )
    if exists_still is None:
        raise Conflict(
            "previous_version_deleted",
            f"alias {alias!r} of model {name!r} pointed at version {previous} before version "
            f"{current}, but version {previous} has been deleted; set the alias with PUT",
        )
    return set_alias(session, name, alias, previous, changed_by=changed_by, action="rollback")


def alias_history(
    session: Session, name: str, alias: str, *, limit: int, after: int | None
) -> tuple[list[AliasChange], bool]:
    """An alias's changes, newest first (also after the alias is deleted); `after` is the
    id of the last change of the previous page."""
    get_model(session, name)
    query = (
        select(AliasChange)
        .where(AliasChange.model_name == name, AliasChange.alias == alias)
        .order_by(AliasChange.id.desc())
        .limit(limit + 1)
    )
    if after is not None:
        query = query.where(AliasChange.id < after)
    rows = list(session.scalars(query))
    return rows[:limit], len(rows) > limit


def check_alias_target(name: str, alias: str, target: int, expected: int) -> None:
    if target != expected:
        raise Conflict(
            "alias_mismatch",
            f"alias {alias!r} of model {name!r} points at version {target}, not {expected}; "
            "give only the alias, or only the version",
        )
