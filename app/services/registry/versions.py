"""Versions: numbered per model name, registered with their lineage, read, listed and deleted."""

from typing import Any

from sqlalchemy import delete, exists, insert, select, update
from sqlalchemy.orm import Session, undefer

from app.db import changes
from app.db.models import (
    Dataset,
    Job,
    ModelAlias,
    ModelEvaluation,
    ModelVersion,
    RegisteredModel,
)
from app.enums import ACTIVE_JOB_STATUSES
from app.errors import Conflict, NotFound
from app.ids import new_id, utcnow
from app.ml import serialization
from app.ml.transfer import registry as strategies
from app.services import metadata
from app.services.locking import insert_for, lock_rows
from app.services.registry.models import get_model


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
