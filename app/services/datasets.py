"""Dataset use cases: uploads, scikit-learn imports, schema inference, deletion.

Uploads, imports and the one dataset loader (whole, chunked, preview) together: they
share the format detection, the decode limits and the stored file's layout.
"""

import logging
import threading
import unicodedata
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import PurePath
from typing import Any, BinaryIO

import pandas as pd
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.db.models import Dataset, Job
from app.db.session import Database
from app.enums import ACTIVE_JOB_STATUSES, DatasetFormat
from app.errors import Conflict, Invalid, NotFound, UnsupportedMediaType
from app.ids import new_id, utcnow
from app.ml import frames, images
from app.ml.errors import DataError
from app.ml.frames import BoundExceeded, DecodeLimits
from app.schemas.datasets import BuiltinDatasetCreate
from app.services import dataset_files, metadata
from app.services.locking import lock_rows
from app.services.pagination import paginate

log = logging.getLogger(__name__)

MAX_FILENAME_CHARS = 200
_FORMAT_NAMES = {
    DatasetFormat.CSV: "CSV",
    DatasetFormat.PARQUET: "Parquet",
    DatasetFormat.JSONL: "JSON Lines",
    DatasetFormat.NPZ: "an .npz archive",
}
# The DecodeLimits fields that uploads take from settings: a refusal names the variable.
_LIMIT_SETTINGS = (
    "max_dataset_rows",
    "max_dataset_columns",
    "max_cell_bytes",
    "max_decoded_bytes",
)

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


# For the OpenAPI document: the media types an upload's file part may carry.
UPLOAD_MEDIA_TYPES = (*_MEDIA_TYPES, "application/octet-stream")

# Media types that say nothing about the content: a part sent without one (curl -F with a
# file that has no extension) or as generic bytes.
_UNTYPED_MEDIA = frozenset({"", "application/octet-stream"})


def _sniff(head: bytes) -> DatasetFormat:
    """The format of an untyped file from its first bytes: Parquet and .npz (a zip) by
    their magic numbers, JSON Lines by a leading object, anything else read as CSV."""
    if head.startswith(b"PAR1"):
        return DatasetFormat.PARQUET
    if head.startswith(b"PK\x03\x04"):
        return DatasetFormat.NPZ
    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
        return DatasetFormat.JSONL
    return DatasetFormat.CSV


def detect_format(
    filename: str | None, content_type: str | None, head: bytes | None = None
) -> DatasetFormat:
    """The file's format from its extension, else its media type, else (for a file with
    neither, whose first bytes are given) its content; 415 when none of them tells."""
    suffix = PurePath(filename or "").suffix.lower()
    if suffix in _EXTENSIONS:
        return _EXTENSIONS[suffix]
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _MEDIA_TYPES:
        return _MEDIA_TYPES[media]
    if media in _UNTYPED_MEDIA and not suffix and head is not None:
        # No extension and no media type: nothing but the bytes says what the file is. An
        # extension that names another format (.bin, .txt) is still refused below.
        return _sniff(head)
    raise UnsupportedMediaType(
        "unsupported_media_type",
        f"cannot read {filename or 'the upload'!r} ({media or 'no media type'}); expected a "
        "CSV (.csv), Parquet (.parquet) or JSON Lines (.jsonl) file, or NumPy images (.npz)",
    )


def clean_filename(filename: str | None) -> str:
    """The client's file name, safe to store and to show: no directories (`../../etc/passwd`
    is `passwd`), no control or invisible format characters, at most 200 characters (the
    extension kept), and `upload` when nothing is left."""
    text = "".join(
        char for char in filename or "" if unicodedata.category(char) not in ("Cc", "Cf", "Cs")
    )
    text = text.replace("\\", "/").rsplit("/", 1)[-1].strip()
    if text in (".", ".."):
        text = ""
    if len(text) > MAX_FILENAME_CHARS:
        suffix = PurePath(text).suffix
        if len(suffix) > 20:
            suffix = ""
        text = text[: len(text) - len(suffix)][: MAX_FILENAME_CHARS - len(suffix)] + suffix
    return text or "upload"


def upload_limits(settings: Settings) -> DecodeLimits:
    """The bounds an upload is decoded under (GRAFT_MAX_DATASET_ROWS, ...)."""
    return DecodeLimits(**{field: getattr(settings, field) for field in _LIMIT_SETTINGS})


def _describe(data: pd.DataFrame | images.ImageSet) -> list[dict[str, Any]]:
    if isinstance(data, images.ImageSet):
        return data.columns()
    return [{"name": str(name), "dtype": frames.column_dtype(data[name])} for name in data]


def _row_count(data: pd.DataFrame | images.ImageSet) -> int:
    return len(data.labels) if isinstance(data, images.ImageSet) else len(data)


def _store(
    session: Session,
    *,
    name: str,
    fmt: str,
    content: bytes,
    frame: pd.DataFrame | images.ImageSet,
    origin: dict,
    created_by: str | None,
) -> Dataset:
    return _insert(
        session,
        created_by=created_by,
        name=name,
        fmt=fmt,
        content=content,
        rows=_row_count(frame),
        columns=_describe(frame),
        origin=origin,
    )


def _insert(
    session: Session,
    *,
    name: str,
    fmt: str,
    content: BinaryIO | bytes,
    rows: int,
    columns: list[dict[str, Any]],
    origin: dict,
    created_by: str | None,
) -> Dataset:
    """The dataset's row and its file's pieces, in the caller's transaction."""
    dataset_id = new_id("ds")
    size, sha256 = dataset_files.write(session, dataset_id, content)
    dataset = Dataset(
        id=dataset_id,
        name=name,
        format=fmt,
        rows=rows,
        columns=columns,
        size_bytes=size,
        sha256=sha256,
        origin=origin,
        created_at=utcnow(),
        created_by=created_by,
    )
    session.add(dataset)
    session.flush()
    return dataset


def create_from_upload(
    session: Session,
    *,
    filename: str | None,
    content_type: str | None,
    file: BinaryIO | bytes,
    name: str | None,
    settings: Settings,
    created_by: str | None = None,
) -> Dataset:
    """Parse and store an uploaded file; the bytes are kept exactly as sent.

    `file` is the upload's (spooled) file object: it is decoded from the file under the
    settings' bounds (a file over one is refused while it decodes), then, once the decoded
    data is gone, stored a piece at a time and hashed on the way.
    """
    shown = clean_filename(filename)
    stream = frames.as_stream(file)
    head = stream.read(64)
    stream.seek(0)
    fmt = detect_format(shown if filename else None, content_type, head)
    data = _decode_upload(stream, fmt, shown, upload_limits(settings))
    rows, columns = _row_count(data), _describe(data)
    del data
    stream.seek(0)
    return _insert(
        session,
        name=name or PurePath(shown).stem or "upload",
        fmt=fmt,
        content=stream,
        rows=rows,
        columns=columns,
        origin={"type": "upload", "filename": shown},
        created_by=created_by,
    )


def _decode_upload(
    stream: BinaryIO, fmt: DatasetFormat, shown: str, limits: DecodeLimits
) -> pd.DataFrame | images.ImageSet:
    """The upload decoded; 422 invalid_upload naming the file, and the bound and its setting
    when one is exceeded. Anything unexpected is logged here and answered generically."""
    try:
        return _read(stream, fmt, limits)
    except DataError as exc:
        detail = f"{shown}: {exc}"
        if isinstance(exc, BoundExceeded) and exc.bound in _LIMIT_SETTINGS:
            detail += f" (GRAFT_{exc.bound.upper()})"
        raise Invalid("invalid_upload", detail) from exc
    except Exception:
        log.exception("decoding the upload %r as %s failed", shown, fmt)
        raise Invalid(
            "invalid_upload",
            f"{shown}: the file could not be read as {_FORMAT_NAMES.get(fmt, fmt)}; it may be "
            "damaged or use a feature Graft does not read",
        ) from None


def create_builtin(
    session: Session, request: BuiltinDatasetCreate, created_by: str | None = None
) -> Dataset:
    """Import a scikit-learn dataset (optionally shuffled, optionally a row range)."""
    if request.as_images:
        return _create_builtin_images(session, request, created_by)
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
        created_by=created_by,
    )


def _create_builtin_images(
    session: Session, request: BuiltinDatasetCreate, created_by: str | None
) -> Dataset:
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
        created_by=created_by,
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


class _UnchangingDatasets:
    """Datasets as drafts read them, kept per process (the least recently used go first).

    What a draft checks a request against (a dataset's id, name, format, row count and
    columns) never changes once the dataset is stored: only its tags and description do,
    and those no draft reads. So a submission need not open a read transaction to fetch
    them again. Whether the dataset still exists is not taken from here: the write that
    relies on it checks (and on PostgreSQL holds) its row in the same transaction
    (`jobs.queue`), and refuses with `dataset_not_found` if it was deleted meanwhile.
    """

    def __init__(self, size: int) -> None:
        self._size = size
        self._entries: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, session: Session, dataset_id: str) -> Dataset:
        with self._lock:
            found = self._entries.get(dataset_id)
            if found is not None:
                self._entries.move_to_end(dataset_id)
                return found
        dataset = get(session, dataset_id)
        # Detached, with every column loaded: other threads only read it.
        session.expunge(dataset)
        with self._lock:
            self._entries[dataset_id] = dataset
            if len(self._entries) > self._size:
                self._entries.popitem(last=False)
        return dataset


_unchanging = _UnchangingDatasets(size=512)


def get_unchanging(session: Session, dataset_id: str) -> Dataset:
    """A dataset for checking a job request against: its id, name, format, rows and columns
    (read-only; see `_UnchangingDatasets`). 404 if it was never stored."""
    return _unchanging.get(session, dataset_id)


def list_datasets(
    session: Session, *, limit: int, after: str | None, tags: list[str] | None = None
) -> tuple[list[Dataset], bool]:
    return paginate(
        session,
        select(Dataset).where(*metadata.filters(Dataset.tags, tags or [])),
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
    dataset_files.remove(session, dataset_id)
    session.flush()


# Reading a stored dataset, the one way every reader does it: training (`load_data`, the
# whole table), batch prediction and evaluation (`chunks`, a chunk of rows at a time from a
# file read a piece at a time) and the preview (`chunks` in the caller's session).


def load_data(session: Session, dataset_id: str) -> pd.DataFrame | images.ImageSet:
    """The dataset parsed from its stored file: a DataFrame, or an ImageSet for .npz images."""
    dataset = get(session, dataset_id)
    return _read(dataset_files.open_in(session, dataset.id, dataset.size_bytes), dataset.format)


def chunks(
    dataset: Dataset, rows: int, *, session: Session | None = None, database: Database | None = None
) -> Iterator[pd.DataFrame]:
    """A table's rows as DataFrames of at most `rows` rows, in order, decoded one at a time.

    With `database`, each stored piece is read in a short transaction of its own (a reader
    that takes minutes must not pin one snapshot); with `session`, in the caller's.
    """
    if dataset.format == DatasetFormat.NPZ:
        raise Invalid(
            "unsupported_dataset",
            f"dataset {dataset.id} holds images; this reads tables (CSV, Parquet, JSON Lines)",
        )
    if database is not None:
        stream = dataset_files.open_detached(database, dataset.id, dataset.size_bytes)
    else:
        assert session is not None
        stream = dataset_files.open_in(session, dataset.id, dataset.size_bytes)
    return frames.iter_frames(stream, dataset.format, rows)


def _read(
    content: frames.Source, fmt: str, limits: DecodeLimits | None = None
) -> pd.DataFrame | images.ImageSet:
    """Decode a file; without `limits`, a stored dataset's (checked when it was uploaded)."""
    limits = limits or DecodeLimits.generous()
    if fmt == DatasetFormat.NPZ:
        return images.read_npz(content, limits)
    return frames.read_frame(content, fmt, limits)


# A preview reads the dataset's first rows, and summarises its columns over the first
# PREVIEW_SUMMARY_ROWS: a page must not wait for a pass over a million rows.
PREVIEW_SUMMARY_ROWS = 10_000


def preview(session: Session, dataset_id: str, rows: int) -> dict[str, Any]:
    """The first `rows` rows (JSON-ready) and a summary of each column over the first
    PREVIEW_SUMMARY_ROWS rows: missing values, and min/mean/max or the most common values."""
    dataset = get(session, dataset_id)
    head = next(chunks(dataset, PREVIEW_SUMMARY_ROWS, session=session), pd.DataFrame())
    return {
        "id": dataset.id,
        "columns": [str(name) for name in head.columns],
        "rows": [[_plain(value) for value in row] for row in head.head(rows).itertuples(False)],
        "summary_rows": len(head),
        "summary": [_summary(str(name), head[name]) for name in head.columns],
    }


def _plain(value: Any) -> Any:
    if value is None or (isinstance(value, float) and value != value):
        return None
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value if isinstance(value, int | float | str | bool) else str(value)


def _summary(name: str, column: pd.Series) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "name": name,
        "dtype": frames.column_dtype(column),
        "missing": int(column.isna().sum()),
    }
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        numbers = pd.to_numeric(column, errors="coerce").astype(float)
        finite = numbers[numbers.abs() != float("inf")].dropna()
        if len(finite):
            summary |= {
                "min": _plain(finite.min()),
                "mean": _plain(finite.mean()),
                "max": _plain(finite.max()),
            }
        return summary
    counts = column.dropna().astype(str).value_counts()
    summary["distinct"] = len(counts)
    summary["top"] = [
        {"value": str(value)[:200], "count": int(count)} for value, count in counts.head(5).items()
    ]
    return summary
