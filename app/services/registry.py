"""Model registry: versions numbered per name, aliases, lineage, weights."""

import re
from typing import Any

from sqlalchemy import delete, exists, insert, or_, select, update
from sqlalchemy.orm import Session, undefer

from app.db import changes
from app.db.models import (
    AliasChange,
    Dataset,
    Job,
    ModelAlias,
    ModelEvaluation,
    ModelVersion,
    RegisteredModel,
)
from app.enums import ACTIVE_JOB_STATUSES
from app.errors import Conflict, Invalid, NotFound
from app.ids import new_id, utcnow
from app.ml import serialization
from app.ml.transfer import registry as strategies
from app.schemas.jobs import ALIAS_PATTERN
from app.services import metadata
from app.services.locking import insert_for, lock_rows
from app.services.pagination import paginate

DEFAULT_ALIAS = "production"


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


def aliases_of_versions(session: Session, name: str, versions: list[int]) -> dict[int, list[str]]:
    """The aliases pointing at each of a page of one model's versions, in one query."""
    found: dict[int, list[str]] = {version: [] for version in versions}
    if versions:
        for alias, version in session.execute(
            select(ModelAlias.alias, ModelAlias.version)
            .where(ModelAlias.model_name == name, ModelAlias.version.in_(versions))
            .order_by(ModelAlias.alias)
        ):
            found[version].append(alias)
    return found


def latest_version(session: Session, name: str) -> int | None:
    return session.scalar(
        select(ModelVersion.version)
        .where(ModelVersion.model_name == name)
        .order_by(ModelVersion.version.desc())
        .limit(1)
    )


def get_version(
    session: Session,
    name: str,
    version: int,
    *,
    with_weights: bool = False,
    lock: str | None = None,
) -> ModelVersion:
    """One version; `lock` ("share" or "update") holds its row until the caller commits."""
    query = select(ModelVersion).where(
        ModelVersion.model_name == name, ModelVersion.version == version
    )
    if with_weights:
        query = query.options(undefer(ModelVersion.weights))
    if lock is not None:
        query = lock_rows(query, lock)
    found = session.scalars(query).one_or_none()
    if found is None:
        get_model(session, name)
        raise NotFound("version_not_found", f"model {name!r} has no version {version}")
    return found


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


def check_alias_target(name: str, alias: str, target: int, expected: int) -> None:
    if target != expected:
        raise Conflict(
            "alias_mismatch",
            f"alias {alias!r} of model {name!r} points at version {target}, not {expected}; "
            "give only the alias, or only the version",
        )


def list_versions(
    session: Session, name: str, *, limit: int, after: int | None, tags: list[str] | None = None
) -> tuple[list[ModelVersion], bool]:
    get_model(session, name)
    query = select(ModelVersion).where(
        ModelVersion.model_name == name, *metadata.filters(ModelVersion.tags, tags or [])
    )
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
    exactly when its job succeeded. Its lineage (this version, then its ancestors, with the
    sha256 of every dataset each was trained on) is fixed now, from the parent's.
    """
    (number,) = _next_numbers(session, name, 1)
    fields.setdefault("memory_bytes", serialization.tensor_bytes(weights))
    version = ModelVersion(
        id=new_id("mv"),
        model_name=name,
        version=number,
        created_at=utcnow(),
        weights=weights,
        **fields,
    )
    version.lineage = _lineage(session, version)
    session.add(version)
    session.flush()
    # A new latest version changes what a name without an alias resolves to.
    changes.mark(session, changes.REGISTRY)
    return version


def _next_numbers(session: Session, name: str, count: int) -> range:
    """The next `count` version numbers of `name`, creating the model on first use."""
    # Two jobs may register the first versions of a new name at the same moment: the
    # database keeps one row and the other insert does nothing.
    session.execute(
        insert_for(session, RegisteredModel)
        .values(name=name, created_at=utcnow(), last_version=0)
        .on_conflict_do_nothing(index_elements=["name"])
    )
    # Incrementing in SQL keeps the numbering right when two jobs finish at once.
    last = session.execute(
        update(RegisteredModel)
        .where(RegisteredModel.name == name)
        .values(last_version=RegisteredModel.last_version + count)
        .returning(RegisteredModel.last_version)
    ).scalar_one()
    return range(last - count + 1, last + 1)


def register_versions(
    session: Session, *, name: str, weights: bytes, count: int, **fields: Any
) -> range:
    """`count` new versions of `name` that share weights and fields, in one numbering step
    and one multi-row insert: a bulk import (and the scale benchmark's registry). The same
    rules as `register_version`: the model is created on first use, numbers come from the
    model's counter, and each version's lineage is fixed now. Returns the numbers."""
    if count < 1:
        raise ValueError(f"count must be at least 1, got {count}")
    numbers = _next_numbers(session, name, count)
    fields.setdefault("memory_bytes", serialization.tensor_bytes(weights))
    now = utcnow()
    first = ModelVersion(model_name=name, version=numbers[0], created_at=now, **fields)
    entry, *ancestors = _lineage(session, first)
    session.execute(
        insert(ModelVersion),
        [
            {
                "id": new_id("mv"),
                "model_name": name,
                "version": number,
                "created_at": now,
                "weights": weights,
                "lineage": [{**entry, "version": number}, *ancestors],
                **fields,
            }
            for number in numbers
        ],
    )
    changes.mark(session, changes.REGISTRY)
    return numbers


def dataset_ref(session: Session, dataset_id: str, role: str) -> dict[str, Any]:
    """What lineage records of a dataset: enough to prove which bytes it was."""
    dataset = session.get(Dataset, dataset_id)
    return {
        "id": dataset_id,
        "role": role,
        "name": None if dataset is None else dataset.name,
        "sha256": None if dataset is None else dataset.sha256,
        "rows": None if dataset is None else dataset.rows,
        "size_bytes": None if dataset is None else dataset.size_bytes,
    }


def _lineage(session: Session, version: ModelVersion) -> list[dict[str, Any]]:
    datasets = [dataset_ref(session, version.dataset_id, "training")]
    ancestors: list[dict[str, Any]] = []
    if version.parent_name is not None and version.parent_version is not None:
        parent = session.scalar(
            select(ModelVersion).where(
                ModelVersion.model_name == version.parent_name,
                ModelVersion.version == version.parent_version,
            )
        )
        if parent is None:
            ancestors = [_unknown_ancestor(version.parent_name, version.parent_version)]
        else:
            ancestors = list(parent.lineage)
            if strategies.needs_source_rows(version.strategy):
                # joint also trains on the rows the parent was trained on.
                datasets.append(dataset_ref(session, parent.dataset_id, "joint_source"))
    entry = {
        "name": version.model_name,
        "version": version.version,
        "kind": version.kind,
        "strategy": version.strategy,
        "job_id": version.job_id,
        "created_at": version.created_at.isoformat(),
        "datasets": datasets,
    }
    return [entry, *ancestors]


def _unknown_ancestor(name: str, version: int) -> dict[str, Any]:
    return {
        "name": name,
        "version": version,
        "kind": None,
        "strategy": None,
        "job_id": None,
        "created_at": None,
        "datasets": [],
    }


def _lock_model(session: Session, name: str) -> None:
    """Hold the model's row until commit: its alias changes run one after the other, so
    each records the target it really replaced."""
    found = session.scalar(
        lock_rows(select(RegisteredModel.name).where(RegisteredModel.name == name), "update")
    )
    if found is None:
        raise NotFound("model_not_found", f"no registered model named {name!r}")


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
    _lock_model(session, name)
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
    _lock_model(session, name)
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
    _lock_model(session, name)
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


def delete_version(session: Session, name: str, version: int) -> None:
    """Delete a version unless an alias points at it or an active job builds on it.

    The row is locked first, so an alias being set or a job being created on it commits
    before these checks read (they then refuse), or finds the version gone (404).
    """
    found = get_version(session, name, version, lock="update")
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
    session.execute(
        delete(ModelEvaluation).where(
            ModelEvaluation.model_name == name, ModelEvaluation.version == version
        )
    )
    session.flush()
    changes.mark(session, changes.REGISTRY)


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


def validate_alias_name(alias: str) -> None:
    if not re.match(ALIAS_PATTERN, alias):
        raise Invalid(
            "invalid_alias",
            f"alias {alias!r} is not valid; expected a letter then up to 63 letters, digits, "
            "'_' or '-'",
        )
