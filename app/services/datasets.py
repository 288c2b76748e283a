"""Dataset use cases: uploads, scikit-learn imports, schema inference, deletion."""

import hashlib
from pathlib import PurePath
from typing import Any

import pandas as pd
from sqlalchemy import or_, select
from sqlalchemy.orm import Session, undefer

from app.db.models import Dataset, Job
from app.enums import ACTIVE_JOB_STATUSES, DatasetFormat
from app.errors import Conflict, Invalid, NotFound, UnsupportedMediaType
from app.ids import new_id, utcnow
from app.ml import frames, images
from app.ml.errors import DataError
from app.schemas.datasets import BuiltinDatasetCreate
from app.services.locking import lock_rows
from app.services.pagination import paginate

_EXTENSIONS = {
    ".csv": DatasetFormat.CSV,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
    ".jsonl": DatasetFormat.JSONL,
    ".ndjson": DatasetFormat.JSONL,
    ".npz": DatasetFormat.NPZ,
}
_MEDIA_TYPES = {
    "text/csv": DatasetFormat.CSV,
    "application/csv": DatasetFormat.CSV,
    "application/vnd.apache.parquet": DatasetFormat.PARQUET,
    "application/x-parquet": DatasetFormat.PARQUET,
    "application/jsonl": DatasetFormat.JSONL,
    "application/x-ndjson": DatasetFormat.JSONL,
    "application/x-jsonlines": DatasetFormat.JSONL,
    "application/x-npz": DatasetFormat.NPZ,
}


def detect_format(filename: str | None, content_type: str | None) -> DatasetFormat:
    """The file's format from its extension, else its media type; 415 when neither is known."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _MEDIA_TYPES:
        return _MEDIA_TYPES[media]
    raise UnsupportedMediaType(
        "unsupported_media_type",
        f"cannot read {filename or 'the upload'!r} ({media or 'no media type'}); expected a "
        "CSV (.csv), Parquet (.parquet) or JSON Lines (.jsonl) file, or NumPy images (.npz)",
    )


def _describe(data: pd.DataFrame | images.ImageSet) -> list[dict[str, Any]]:
    if isinstance(data, images.ImageSet):
        return data.columns()
    return [{"name": str(name), "dtype": frames.column_dtype(data[name])} for name in data]


def _store(
    session: Session,
    *,
    name: str,
    fmt: str,
    content: bytes,
    frame: pd.DataFrame | images.ImageSet,
    origin: dict,
) -> Dataset:
    dataset = Dataset(
        id=new_id("ds"),
        name=name,
        format=fmt,
        rows=len(frame.labels) if isinstance(frame, images.ImageSet) else len(frame),
        columns=_describe(frame),
        size_bytes=len(content),
        sha256=hashlib.sha256(content).hexdigest(),
        origin=origin,
        created_at=utcnow(),
        content=content,
    )
    session.add(dataset)
    session.flush()
    return dataset


def create_from_upload(
    session: Session,
    *,
    filename: str | None,
    content_type: str | None,
    content: bytes,
    name: str | None,
) -> Dataset:
    """Parse and store an uploaded file; the bytes are kept exactly as sent."""
    fmt = detect_format(filename, content_type)
    try:
        frame = _read(content, fmt)
    except DataError as exc:
        raise Invalid("invalid_upload", f"{filename or 'upload'}: {exc}") from exc
    return _store(
        session,
        name=name or PurePath(filename or "upload").stem or "upload",
        fmt=fmt,
        content=content,
        frame=frame,
        origin={"type": "upload", "filename": filename},
    )


def create_builtin(session: Session, request: BuiltinDatasetCreate) -> Dataset:
    """Import a scikit-learn dataset (optionally shuffled, optionally a row range)."""
    if request.as_images:
        return _create_builtin_images(session, request)
    try:
        frame = frames.load_builtin(request.name, request.start, request.stop, request.shuffle_seed)
    except DataError as exc:
        raise Invalid(exc.code, str(exc)) from exc
    label = _builtin_label(request)
    return _store(
        session,
        name=label,
        fmt=DatasetFormat.PARQUET,
        content=frames.to_parquet_bytes(frame),
        frame=frame,
        origin={"type": "builtin", **request.model_dump()},
    )


def _create_builtin_images(session: Session, request: BuiltinDatasetCreate) -> Dataset:
    try:
        image_set, classes = images.load_builtin_images(
            request.name, request.start, request.stop, request.shuffle_seed
        )
    except DataError as exc:
        raise Invalid(exc.code, str(exc)) from exc
    return _store(
        session,
        name=_builtin_label(request) + " images",
        fmt=DatasetFormat.NPZ,
        content=images.to_npz_bytes(image_set, classes),
        frame=image_set,
        origin={"type": "builtin", **request.model_dump()},
    )


def _builtin_label(request: BuiltinDatasetCreate) -> str:
    label: str = request.name
    if request.start is not None or request.stop is not None:
        label += f"[{request.start or 0}:{'' if request.stop is None else request.stop}]"
    if request.shuffle_seed is not None:
        label += f" shuffled({request.shuffle_seed})"
    return label


def get(session: Session, dataset_id: str, *, lock: str | None = None) -> Dataset:
    """One dataset; `lock` ("share" or "update") holds its row until the caller commits."""
    query = select(Dataset).where(Dataset.id == dataset_id)
    dataset = session.scalar(query if lock is None else lock_rows(query, lock))
    if dataset is None:
        raise NotFound("dataset_not_found", f"no dataset with id {dataset_id!r}")
    return dataset


def list_datasets(session: Session, *, limit: int, after: str | None) -> tuple[list[Dataset], bool]:
    return paginate(
        session,
        select(Dataset),
        created_at=Dataset.created_at,
        key=Dataset.id,
        limit=limit,
        after=after,
    )


def delete(session: Session, dataset_id: str) -> None:
    """Delete a dataset unless a queued or running job still needs it.

    Its row is locked first: a job being created on it (which holds the row shared) commits
    before the check below reads, so the check sees it; or the job finds the dataset gone.
    A `joint` fine-tune needs its base version's training dataset as well.
    """
    dataset = get(session, dataset_id, lock="update")
    user = session.scalar(
        select(Job.id)
        .where(
            or_(Job.dataset_id == dataset_id, Job.source_dataset_id == dataset_id),
            Job.status.in_(ACTIVE_JOB_STATUSES),
        )
        .limit(1)
    )
    if user is not None:
        raise Conflict(
            "dataset_in_use",
            f"dataset {dataset_id!r} is used by queued or running job {user}; cancel it or "
            "wait for it to end",
        )
    session.delete(dataset)
    session.flush()


def load_data(session: Session, dataset_id: str) -> pd.DataFrame | images.ImageSet:
    """The dataset parsed from its stored bytes: a DataFrame, or an ImageSet for .npz images."""
    dataset = session.scalars(
        select(Dataset).where(Dataset.id == dataset_id).options(undefer(Dataset.content))
    ).one_or_none()
    if dataset is None:
        raise NotFound("dataset_not_found", f"no dataset with id {dataset_id!r}")
    return _read(dataset.content, dataset.format)


def _read(content: bytes, fmt: str) -> pd.DataFrame | images.ImageSet:
    if fmt == DatasetFormat.NPZ:
        return images.read_npz(content)
    return frames.read_frame(content, fmt)
