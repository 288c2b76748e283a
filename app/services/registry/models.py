"""Registered models: one row per name, its summaries (latest version, aliases) and its delete."""

from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from app.db import changes
from app.db.models import (
    AliasChange,
    Job,
    ModelAlias,
    ModelEvaluation,
    ModelVersion,
    RegisteredModel,
)
from app.enums import ACTIVE_JOB_STATUSES
from app.errors import Conflict, NotFound
from app.services import metadata
from app.services.locking import lock_rows
from app.services.pagination import paginate


def get_model(session: Session, name: str, *, lock: str | None = None) -> RegisteredModel:
    """One model; `lock` ("share" or "update") holds its row until the caller commits."""
    model = session.get(
        RegisteredModel, name, with_for_update=None if lock is None else {"read": lock == "share"}
    )
    if model is None:
        raise NotFound("model_not_found", f"no registered model named {name!r}")
    return model


def list_models(
    session: Session, *, limit: int, after: str | None, tags: list[str] | None = None
) -> tuple[list[RegisteredModel], bool]:
    return paginate(
        session,
        select(RegisteredModel).where(*metadata.filters(RegisteredModel.tags, tags or [])),
        created_at=RegisteredModel.created_at,
        key=RegisteredModel.name,
        limit=limit,
        after=after,
    )


def model_summaries(
    session: Session, names: list[str]
) -> dict[str, tuple[int | None, dict[str, int]]]:
    """Each model's latest version and aliases, for a page of models: two indexed queries
    for the whole page, not two per model."""
    if not names:
        return {}
    # One index seek per model (the newest entry of its (model_name, version) range): a
    # GROUP BY with max() reads every version of each model on SQLite.
    newest = (
        select(ModelVersion.version)
        .where(ModelVersion.model_name == RegisteredModel.name)
        .order_by(ModelVersion.version.desc())
        .limit(1)
        .correlate(RegisteredModel)
        .scalar_subquery()
    )
    latest: dict[str, int | None] = {
        name: number
        for name, number in session.execute(
            select(RegisteredModel.name, newest).where(RegisteredModel.name.in_(names))
        )
    }
    aliases: dict[str, dict[str, int]] = {name: {} for name in names}
    for name, alias, version in session.execute(
        select(ModelAlias.model_name, ModelAlias.alias, ModelAlias.version)
        .where(ModelAlias.model_name.in_(names))
        .order_by(ModelAlias.model_name, ModelAlias.alias)
    ):
        aliases[name][alias] = version
    return {name: (latest.get(name), aliases[name]) for name in names}


def latest_version(session: Session, name: str) -> int | None:
    return session.scalar(
        select(ModelVersion.version)
        .where(ModelVersion.model_name == name)
        .order_by(ModelVersion.version.desc())
        .limit(1)
    )


def lock_model(session: Session, name: str) -> None:
    """Hold the model's row until commit: its alias changes run one after the other, so
    each records the target it really replaced."""
    found = session.scalar(
        lock_rows(select(RegisteredModel.name).where(RegisteredModel.name == name), "update")
    )
    if found is None:
        raise NotFound("model_not_found", f"no registered model named {name!r}")


def delete_model(session: Session, name: str) -> None:
    """Delete a model with all its versions and aliases, unless a queued or running job
    builds on one of its versions or will register a version into it."""
    found = session.scalar(
        lock_rows(select(RegisteredModel).where(RegisteredModel.name == name), "update")
    )
    if found is None:
        raise NotFound("model_not_found", f"no registered model named {name!r}")
    # Locking every version makes a job being created on one of them commit first.
    session.execute(
        lock_rows(select(ModelVersion.id).where(ModelVersion.model_name == name), "update")
    )
    busy = session.scalar(
        select(Job.id)
        .where(
            or_(Job.base_model_name == name, Job.model_name == name),
            Job.status.in_(ACTIVE_JOB_STATUSES),
        )
        .limit(1)
    )
    if busy is not None:
        raise Conflict(
            "model_in_use",
            f"model {name!r} is used by queued or running job {busy} (it builds on one of "
            "its versions or registers a version into it); cancel it or wait",
        )
    session.execute(delete(ModelAlias).where(ModelAlias.model_name == name))
    session.execute(delete(AliasChange).where(AliasChange.model_name == name))
    session.execute(delete(ModelVersion).where(ModelVersion.model_name == name))
    session.execute(delete(ModelEvaluation).where(ModelEvaluation.model_name == name))
    session.execute(delete(RegisteredModel).where(RegisteredModel.name == name))
    changes.mark(session, changes.REGISTRY)
