import json
import re
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile, status
from fastapi.responses import StreamingResponse
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
from app.schemas.datasets import BuiltinDatasetCreate, DatasetPreview, DatasetRead
from app.schemas.metadata import MAX_DESCRIPTION, MetadataPatch
from app.services import dataset_files, metadata
from app.services import datasets as datasets_service

router = APIRouter(prefix="/datasets", tags=["datasets"])

_UPLOAD_FIELDS = ("file", "name", "tags", "description")


async def _each_field_once(request: Request) -> None:
    """422 for an upload that sends a field more than once: FastAPI would keep one of the
    values and drop the others without a word. (The form is parsed once; the route's own
    parameters read the same parse.)"""
    form = await request.form()
    repeated = [name for name in _UPLOAD_FIELDS if len(form.getlist(name)) > 1]
    if repeated:
        raise Invalid(
            "repeated_field",
            f"form field(s) {repeated} were sent more than once; send each of "
            f"{list(_UPLOAD_FIELDS)} at most once",
        )


@router.post(
    "",
    dependencies=[Depends(_each_field_once)],
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


_DOWNLOAD_MEDIA_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "jsonl": "application/jsonl",
    "npz": "application/x-npz",
}


@router.get(
    "/{dataset_id}/content",
    summary="Download a dataset's file",
    response_class=StreamingResponse,
    responses={
        **problem_responses(404),
        200: {
            "description": "The file exactly as stored (an upload's bytes as sent; a batch "
            "prediction's result as written); its sha256 is the dataset's.",
            "content": {
                media: {"schema": {"type": "string", "format": "binary"}}
                for media in _DOWNLOAD_MEDIA_TYPES.values()
            },
        },
    },
)
def download_dataset(
    session: ReadSessionDep, request: Request, dataset_id: str
) -> StreamingResponse:
    """The stored file, streamed a piece at a time (`ETag` is its sha256)."""
    dataset = datasets_service.get(session, dataset_id)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset.name).strip("._") or dataset.id
    filename = f"{stem[:100]}.{dataset.format}"
    return StreamingResponse(
        dataset_files.iter_pieces(request.app.state.database, dataset.id),
        media_type=_DOWNLOAD_MEDIA_TYPES.get(dataset.format, "application/octet-stream"),
        headers={
            "Content-Length": str(dataset.size_bytes),
            "Content-Disposition": f'attachment; filename="{filename}"',
            "ETag": f'"{dataset.sha256}"',
        },
    )


@router.get(
    "/{dataset_id}/preview",
    response_model=DatasetPreview,
    summary="Preview a dataset's first rows and columns",
    responses=problem_responses(404, 422),
)
def preview_dataset(
    session: ReadSessionDep,
    dataset_id: str,
    rows: Annotated[int, Query(ge=1, le=100, description="How many first rows to show.")] = 20,
) -> DatasetPreview:
    """The first rows, and per column its missing values and min/mean/max (numbers) or most
    common values (text), over the first 10,000 rows (`summary_rows`). Tables only: an image
    dataset is 422 `unsupported_dataset`."""
    return DatasetPreview.model_validate(datasets_service.preview(session, dataset_id, rows))


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
