from typing import Annotated

from fastapi import APIRouter, File, Form, Response, UploadFile, status

from app.api.deps import AfterQuery, LimitQuery, ReadSessionDep, SessionDep
from app.schemas.common import Page, problem_responses
from app.schemas.datasets import BuiltinDatasetCreate, DatasetRead
from app.services import datasets as datasets_service

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
    file: Annotated[
        UploadFile, File(description="A CSV, Parquet or JSON Lines file, or NumPy images (.npz).")
    ],
    name: Annotated[str | None, Form(max_length=200)] = None,
) -> DatasetRead:
    """Upload a CSV, Parquet or JSON Lines table, or an .npz of images (X, y); shows its schema."""
    content = file.file.read()
    dataset = datasets_service.create_from_upload(
        session,
        filename=file.filename,
        content_type=file.content_type,
        content=content,
        name=name,
    )
    return DatasetRead.model_validate(dataset)


@router.post(
    "/builtin",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    summary="Import a scikit-learn dataset",
    responses=problem_responses(422),
)
def create_builtin_dataset(session: SessionDep, body: BuiltinDatasetCreate) -> DatasetRead:
    """Import iris, wine, breast_cancer, digits or diabetes, optionally shuffled and sliced."""
    return DatasetRead.model_validate(datasets_service.create_builtin(session, body))


@router.get("", response_model=Page[DatasetRead], summary="List datasets")
def list_datasets(
    session: ReadSessionDep, limit: LimitQuery = 50, after: AfterQuery = None
) -> Page[DatasetRead]:
    """Datasets, newest first."""
    rows, has_more = datasets_service.list_datasets(session, limit=limit, after=after)
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
