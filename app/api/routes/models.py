"""/v1/models: registered models, their versions, weights, exports and aliases.

One resource's routes in one module (the registry's), as every /v1 resource has; long
because it has the most operations.
"""

from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status
from sqlalchemy.orm import Session

from app.api.deps import (
    AfterQuery,
    KeyIdDep,
    LimitQuery,
    ReadSessionDep,
    SessionDep,
    TagQuery,
)
from app.schemas.common import MAX_INT32, Page, problem_responses
from app.schemas.jobs import ALIAS_PATTERN
from app.schemas.metadata import MetadataPatch
from app.schemas.models import (
    AliasChangeRead,
    AliasRead,
    AliasUpdate,
    ModelVersionRead,
    RegisteredModelRead,
)
from app.services import exports as exports_service
from app.services import metadata
from app.services import registry as registry_service

if TYPE_CHECKING:
    # Types only: the API reaches the ORM through the services.
    from app.db.models import ModelVersion, RegisteredModel


router = APIRouter(prefix="/models", tags=["models"])

AliasPath = Annotated[
    str, Path(pattern=ALIAS_PATTERN, description="A letter, then letters, digits, '_' or '-'.")
]
VersionPath = Annotated[int, Path(ge=1, le=MAX_INT32)]


def models_to_read(session: Session, models: list["RegisteredModel"]) -> list[RegisteredModelRead]:
    summaries = registry_service.model_summaries(session, [model.name for model in models])
    return [
        RegisteredModelRead(
            name=model.name,
            created_at=model.created_at,
            latest_version=summaries[model.name][0],
            aliases=summaries[model.name][1],
            tags=model.tags or {},
            description=model.description,
        )
        for model in models
    ]


def versions_to_read(session: Session, versions: list["ModelVersion"]) -> list[ModelVersionRead]:
    """A page of one model's versions, with their aliases read in one query."""
    if not versions:
        return []
    aliases = registry_service.aliases_of_versions(
        session, versions[0].model_name, [version.version for version in versions]
    )
    return [version_to_read(version, aliases[version.version]) for version in versions]


def version_to_read(version: "ModelVersion", aliases: list[str]) -> ModelVersionRead:
    parent = None
    if version.parent_name is not None and version.parent_version is not None:
        parent = {"name": version.parent_name, "version": version.parent_version}
    return ModelVersionRead.model_validate(
        {
            "name": version.model_name,
            "version": version.version,
            "created_at": version.created_at,
            "job_id": version.job_id,
            "kind": version.kind,
            "strategy": version.strategy,
            "parent": parent,
            "dataset_id": version.dataset_id,
            "task": version.task,
            "signature": version.signature,
            "architecture": version.architecture,
            "hyperparameters": version.hyperparameters,
            "preprocessing": version.preprocessing,
            "metrics": version.metrics,
            "transfer_report": (version.metrics or {}).get("transfer_report"),
            "size_bytes": version.size_bytes,
            "sha256": version.sha256,
            "memory_bytes": version.memory_bytes,
            "aliases": aliases,
            "lineage": version.lineage,
            "created_by": version.created_by,
            "tags": version.tags or {},
            "description": version.description,
        }
    )


@router.get("", response_model=Page[RegisteredModelRead], summary="List registered models")
def list_models(
    session: ReadSessionDep, limit: LimitQuery = 50, after: AfterQuery = None, tag: TagQuery = None
) -> Page[RegisteredModelRead]:
    """Registered models, newest first (`after` is a model name; `tag` filters)."""
    rows, has_more = registry_service.list_models(session, limit=limit, after=after, tags=tag)
    return Page[RegisteredModelRead](data=models_to_read(session, rows), has_more=has_more)


@router.get(
    "/{name}",
    response_model=RegisteredModelRead,
    summary="Get a registered model",
    responses=problem_responses(404),
)
def get_model(session: ReadSessionDep, name: str) -> RegisteredModelRead:
    """A model's latest version number and aliases."""
    return models_to_read(session, [registry_service.get_model(session, name)])[0]


@router.patch(
    "/{name}",
    response_model=RegisteredModelRead,
    summary="Change a model's tags or description",
    responses=problem_responses(404, 422),
)
def patch_model(session: SessionDep, name: str, body: MetadataPatch) -> RegisteredModelRead:
    """A merge patch: tags set to null are removed, others added or replaced."""
    model = registry_service.get_model(session, name, lock="update")
    metadata.apply(model, body)
    session.flush()
    return models_to_read(session, [model])[0]


@router.delete(
    "/{name}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a registered model",
    responses=problem_responses(404, 409),
)
def delete_model(session: SessionDep, name: str) -> Response:
    """Delete a model with all its versions and aliases; refused (409) while a queued or
    running job builds on one of its versions or registers a version into it."""
    registry_service.delete_model(session, name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{name}/versions",
    response_model=Page[ModelVersionRead],
    summary="List a model's versions",
    responses=problem_responses(404),
)
def list_versions(
    session: ReadSessionDep,
    name: str,
    limit: LimitQuery = 50,
    after: Annotated[
        int | None, Query(ge=1, le=MAX_INT32, description="Cursor: a version number.")
    ] = None,
    tag: TagQuery = None,
) -> Page[ModelVersionRead]:
    """Versions, newest first (with `tag`, those with every tag given)."""
    rows, has_more = registry_service.list_versions(
        session, name, limit=limit, after=after, tags=tag
    )
    return Page[ModelVersionRead](data=versions_to_read(session, rows), has_more=has_more)


@router.get(
    "/{name}/versions/{version}",
    response_model=ModelVersionRead,
    summary="Get a version",
    responses=problem_responses(404),
)
def get_version(session: ReadSessionDep, name: str, version: VersionPath) -> ModelVersionRead:
    """Signature, preprocessing, architecture, hyperparameters, metrics and lineage."""
    return versions_to_read(session, [registry_service.get_version(session, name, version)])[0]


@router.patch(
    "/{name}/versions/{version}",
    response_model=ModelVersionRead,
    summary="Change a version's tags or description",
    responses=problem_responses(404, 422),
)
def patch_version(
    session: SessionDep, name: str, version: VersionPath, body: MetadataPatch
) -> ModelVersionRead:
    """A merge patch: tags set to null are removed, others added or replaced. The weights,
    metrics and lineage never change."""
    found = registry_service.get_version(session, name, version, lock="update")
    metadata.apply(found, body)
    session.flush()
    return versions_to_read(session, [found])[0]


@router.delete(
    "/{name}/versions/{version}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a version",
    responses=problem_responses(404, 409),
)
def delete_version(session: SessionDep, name: str, version: VersionPath) -> Response:
    """Refused (409) while an alias points at it or a queued/running job builds on it."""
    registry_service.delete_version(session, name, version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{name}/versions/{version}/weights",
    summary="Download a version's weights (safetensors)",
    response_class=Response,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "safetensors file"},
        **problem_responses(404),
    },
)
def download_weights(session: ReadSessionDep, name: str, version: VersionPath) -> Response:
    """The state dict as a safetensors file; its sha256 is in the ETag and the version."""
    found = registry_service.get_version(session, name, version, with_weights=True)
    return Response(
        content=found.weights,
        media_type="application/octet-stream",
        headers={
            "Content-Disposition": f'attachment; filename="{name}-v{version}.safetensors"',
            "ETag": f'"{found.sha256}"',
        },
    )


@router.get(
    "/{name}/versions/{version}/export",
    response_class=Response,
    summary="Export a version as ONNX or TorchScript",
    responses={
        **problem_responses(404, 422),
        200: {
            "description": "One self-contained file: raw feature values in, the preprocessing "
            "(standardisation, category encoding, image scaling) folded in, probabilities and "
            "label (or the regression value) out. Its signature is in the file's metadata.",
            "content": {
                "application/onnx": {"schema": {"type": "string", "format": "binary"}},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
            },
        },
    },
)
def export_version(
    session: ReadSessionDep,
    name: str,
    version: Annotated[int, Path(ge=1, le=MAX_INT32)],
    export_format: Annotated[
        Literal["onnx", "torchscript"],
        Query(alias="format", description="onnx (default) or torchscript"),
    ] = "onnx",
) -> Response:
    """Take a model out of Graft: ONNX for onnxruntime (and anything that reads ONNX),
    TorchScript for `torch.jit.load`, both giving `predict`'s outputs for the same rows."""
    exported, digest = exports_service.export_version(session, name, version, export_format)
    return Response(
        content=exported.content,
        media_type=exported.media_type,
        headers={
            "Content-Disposition": f'attachment; filename="{exported.filename}"',
            "ETag": f'"{digest}"',
        },
    )


@router.put(
    "/{name}/aliases/{alias}",
    response_model=AliasRead,
    summary="Set or move an alias",
    responses=problem_responses(404, 422),
)
def set_alias(
    session: SessionDep, key_id: KeyIdDep, name: str, alias: AliasPath, body: AliasUpdate
) -> AliasRead:
    """Point `alias` at a version; a moved alias takes effect on the next request. The
    move is kept in the alias's history (`GET .../history`), which `rollback` reads."""
    row, before = registry_service.set_alias(session, name, alias, body.version, changed_by=key_id)
    return AliasRead(
        name=row.model_name, alias=row.alias, version=row.version, previous_version=before
    )


@router.post(
    "/{name}/aliases/{alias}/rollback",
    response_model=AliasRead,
    summary="Move an alias back to its previous target",
    responses=problem_responses(404, 409),
)
def rollback_alias(session: SessionDep, key_id: KeyIdDep, name: str, alias: str) -> AliasRead:
    """Point the alias back at the version its last change replaced (409
    no_previous_version for an alias never moved, previous_version_deleted when that version
    is gone). A rollback is a change too: a second one goes forward again."""
    row, before = registry_service.rollback_alias(session, name, alias, changed_by=key_id)
    return AliasRead(
        name=row.model_name, alias=row.alias, version=row.version, previous_version=before
    )


@router.get(
    "/{name}/aliases/{alias}/history",
    response_model=Page[AliasChangeRead],
    summary="An alias's history",
    responses=problem_responses(404),
)
def alias_history(
    session: ReadSessionDep,
    name: str,
    alias: str,
    limit: LimitQuery = 50,
    after: Annotated[
        int | None,
        Query(
            ge=0,
            le=MAX_INT32,
            description="Cursor: the `id` of the last change of the previous page.",
        ),
    ] = None,
) -> Page[AliasChangeRead]:
    """Every set, rollback and delete of the alias, newest first: which version it pointed
    at before and after, when, and which API key did it."""
    rows, has_more = registry_service.alias_history(session, name, alias, limit=limit, after=after)
    return Page[AliasChangeRead](
        data=[
            AliasChangeRead(
                id=row.id,
                name=row.model_name,
                alias=row.alias,
                action=row.action,
                previous_version=row.previous_version,
                version=row.version,
                changed_at=row.changed_at,
                changed_by=row.changed_by,
            )
            for row in rows
        ],
        has_more=has_more,
    )


@router.delete(
    "/{name}/aliases/{alias}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Remove an alias",
    responses=problem_responses(404),
)
def delete_alias(session: SessionDep, key_id: KeyIdDep, name: str, alias: str) -> Response:
    """Remove an alias; the version it pointed at is kept, and so is the alias's history."""
    registry_service.delete_alias(session, name, alias, changed_by=key_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
