"""Model registry: versions numbered per name, aliases, lineage, weights."""

import re
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, undefer

from app.db.models import Job, ModelAlias, ModelVersion, RegisteredModel
from app.enums import ACTIVE_JOB_STATUSES
from app.errors import Conflict, Invalid, NotFound
from app.ids import new_id, utcnow
from app.ml import serialization
from app.schemas.jobs import ALIAS_PATTERN
from app.services.pagination import paginate

DEFAULT_ALIAS = "production"


def get_model(session: Session, name: str) -> RegisteredModel:
    model = session.get(RegisteredModel, name)
    if model is None:
        raise NotFound("model_not_found", f"no registered model named {name!r}")
    return model


def list_models(
    session: Session, *, limit: int, after: str | None
) -> tuple[list[RegisteredModel], bool]:
    return paginate(
        session,
        select(RegisteredModel),
        created_at=RegisteredModel.created_at,
        key=RegisteredModel.name,
        limit=limit,
        after=after,
    )


def latest_version(session: Session, name: str) -> int | None:
    return session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_name == name)
    )


def aliases_of_model(session: Session, name: str) -> dict[str, int]:
    rows = session.execute(
        select(ModelAlias.alias, ModelAlias.version)
        .where(ModelAlias.model_name == name)
        .order_by(ModelAlias.alias)
    )
    return {alias: version for alias, version in rows}


def get_version(
    session: Session, name: str, version: int, *, with_weights: bool = False
) -> ModelVersion:
    query = select(ModelVersion).where(
        ModelVersion.model_name == name, ModelVersion.version == version
    )
    if with_weights:
        query = query.options(undefer(ModelVersion.weights))
    found = session.scalars(query).one_or_none()
    if found is None:
        get_model(session, name)
        raise NotFound("version_not_found", f"model {name!r} has no version {version}")
    return found


def resolve(
    session: Session, name: str, *, version: int | None = None, alias: str | None = None
) -> ModelVersion:
    """The version asked for: by number, by alias, else `production`, else the latest."""
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


def list_versions(
    session: Session, name: str, *, limit: int, after: int | None
) -> tuple[list[ModelVersion], bool]:
    get_model(session, name)
    query = select(ModelVersion).where(ModelVersion.model_name == name)
    if after is not None:
        query = query.where(ModelVersion.version < after)
    rows = list(session.scalars(query.order_by(ModelVersion.version.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def aliases_of_version(session: Session, version: ModelVersion) -> list[str]:
    return list(
        session.scalars(
            select(ModelAlias.alias)
            .where(
                ModelAlias.model_name == version.model_name,
                ModelAlias.version == version.version,
            )
            .order_by(ModelAlias.alias)
        )
    )


def register_version(session: Session, *, name: str, weights: bytes, **fields: Any) -> ModelVersion:
    """Add the next numbered version of `name` (creating the model on first use).

    The caller commits it together with the job's success, so a version exists
    exactly when its job succeeded.
    """
    if session.get(RegisteredModel, name) is None:
        try:
            with session.begin_nested():
                session.add(RegisteredModel(name=name, created_at=utcnow(), last_version=0))
                session.flush()
        except IntegrityError:
            # Another job registered the first version of this name at the same moment
            # (PostgreSQL lets both try); its row is committed now, so number after it.
            pass
    # Incrementing in SQL keeps the numbering right when two jobs finish at once.
    number = session.execute(
        update(RegisteredModel)
        .where(RegisteredModel.name == name)
        .values(last_version=RegisteredModel.last_version + 1)
        .returning(RegisteredModel.last_version)
    ).scalar_one()
    fields.setdefault("memory_bytes", serialization.tensor_bytes(weights))
    version = ModelVersion(
        id=new_id("mv"),
        model_name=name,
        version=number,
        created_at=utcnow(),
        weights=weights,
        **fields,
    )
    session.add(version)
    session.flush()
    return version


def set_alias(session: Session, name: str, alias: str, version: int) -> ModelAlias:
    get_version(session, name, version)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        row = ModelAlias(model_name=name, alias=alias, version=version, updated_at=utcnow())
        session.add(row)
    else:
        row.version = version
        row.updated_at = utcnow()
    session.flush()
    return row


def delete_alias(session: Session, name: str, alias: str) -> None:
    get_model(session, name)
    row = session.get(ModelAlias, (name, alias))
    if row is None:
        raise NotFound("alias_not_found", f"model {name!r} has no alias {alias!r}")
    session.delete(row)
    session.flush()


def delete_version(session: Session, name: str, version: int) -> None:
    """Delete a version unless an alias points at it or an active job builds on it."""
    found = get_version(session, name, version)
    pointing = aliases_of_version(session, found)
    if pointing:
        raise Conflict(
            "version_aliased",
            f"{name} version {version} is aliased as {', '.join(pointing)}; "
            "move or delete the alias first",
        )
    busy = session.scalar(
        select(
            exists().where(
                Job.base_model_name == name,
                Job.base_model_version == version,
                Job.status.in_(ACTIVE_JOB_STATUSES),
            )
        )
    )
    if busy:
        raise Conflict(
            "version_in_use",
            f"{name} version {version} is the base of a queued or running job",
        )
    session.delete(found)
    session.flush()


def validate_alias_name(alias: str) -> None:
    if not re.match(ALIAS_PATTERN, alias):
        raise Invalid(
            "invalid_alias",
            f"alias {alias!r} is not valid; expected a letter then up to 63 letters, digits, "
            "'_' or '-'",
        )
