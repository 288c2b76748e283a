import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from pydantic import ValidationError

from app.api.deps import (
    AfterQuery,
    KeyIdDep,
    LimitQuery,
    ReadSessionDep,
    SessionDep,
    SettingsDep,
    TagQuery,
)
from app.errors import Invalid
from app.schemas.common import Page, problem_responses
from app.schemas.datasets import BuiltinDatasetCreate, DatasetRead
from app.schemas.metadata import MAX_DESCRIPTION, MetadataPatch
from app.services import datasets as datasets_service
from app.services import metadata

router = APIRouter(prefix="/datasets", tags=["datasets"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    summary="Upload a dataset",
    responses=problem_responses(413, 415, 422),
)
def create_dataset(
    session: SessionDep,
    settings: SettingsDep,
    key_id: KeyIdDep,
    file: Annotated[
        UploadFile, File(description="A CSV, Parquet or JSON Lines file, or NumPy images (.npz).")
    ],
    name: Annotated[str | None, Form(max_length=200)] = None,
    tags: Annotated[
        str | None,
        Form(max_length=40_000, description='Tags as a JSON object, e.g. {"team": "vision"}.'),
    ] = None,
    description: Annotated[str | None, Form(max_length=MAX_DESCRIPTION)] = None,
) -> DatasetRead:
    """Upload a CSV, Parquet or JSON Lines table, or an .npz of images (X, y); shows its schema.

    The decoded data is bounded (GRAFT_MAX_DATASET_ROWS, GRAFT_MAX_DATASET_COLUMNS,
    GRAFT_MAX_CELL_BYTES, GRAFT_MAX_DECODED_BYTES): a file over a bound is refused with 422.
    """
    patch = _form_metadata(tags, description)
    # A sync route: the upload is parsed on the thread pool, from its spooled file.
    dataset = datasets_service.create_from_upload(
        session,
        filename=file.filename,
        content_type=file.content_type,
        file=file.file,
        name=name,
        settings=settings,
        created_by=key_id,
    )
    metadata.apply(dataset, patch)
    return DatasetRead.model_validate(dataset)


def _form_metadata(tags: str | None, description: str | None) -> MetadataPatch:
    """The upload's `tags` (a JSON object in a form field) and `description`, checked
    before the file is read."""
    try:
        parsed = json.loads(tags) if tags else {}
    except ValueError as exc:
        raise Invalid("invalid_tags", f"the tags field is not JSON ({exc})") from exc
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise Invalid(
            "invalid_tags",
            'the tags field must be a JSON object of strings, e.g. {"team": "vision"}',
        )
    try:
        return MetadataPatch(tags=parsed, description=description)
    except ValidationError as exc:
        raise Invalid("invalid_tags", exc.errors()[0]["msg"]) from exc


@router.post(
    "/builtin",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    summary="Import a scikit-learn dataset",
    responses=problem_responses(422),
)
def create_builtin_dataset(
    session: SessionDep, body: BuiltinDatasetCreate, key_id: KeyIdDep
) -> DatasetRead:
    """Import iris, wine, breast_cancer, digits or diabetes, optionally shuffled and sliced."""
    dataset = datasets_service.create_builtin(session, body, key_id)
    metadata.apply(dataset, MetadataPatch(tags=dict(body.tags), description=body.description))
    return DatasetRead.model_validate(dataset)


@router.get("", response_model=Page[DatasetRead], summary="List datasets")
def list_datasets(
    session: ReadSessionDep, limit: LimitQuery = 50, after: AfterQuery = None, tag: TagQuery = None
) -> Page[DatasetRead]:
    """Datasets, newest first (with `tag`, those with every tag given)."""
    rows, has_more = datasets_service.list_datasets(session, limit=limit, after=after, tags=tag)
    return Page[DatasetRead](data=[DatasetRead.model_validate(r) for r in rows], has_more=has_more)


@router.get(
    "/{dataset_id}",
    response_model=DatasetRead,
    summary="Get a dataset",
    responses=problem_responses(404),
)
def get_dataset(session: ReadSessionDep, dataset_id: str) -> DatasetRead:
    """One dataset's metadata and schema."""
    return DatasetRead.model_validate(datasets_service.get(session, dataset_id))


@router.patch(
    "/{dataset_id}",
    response_model=DatasetRead,
    summary="Change a dataset's tags or description",
    responses=problem_responses(404, 422),
)
def patch_dataset(session: SessionDep, dataset_id: str, body: MetadataPatch) -> DatasetRead:
    """A merge patch: tags set to null are removed, others added or replaced."""
    dataset = datasets_service.get(session, dataset_id, lock="update")
    metadata.apply(dataset, body)
    session.flush()
    return DatasetRead.model_validate(dataset)


@router.delete(
    "/{dataset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset",
    responses=problem_responses(404, 409),
)
def delete_dataset(session: SessionDep, dataset_id: str) -> Response:
    """Delete a dataset; refused (409) while a queued or running job uses it."""
    datasets_service.delete(session, dataset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
