"""A dataset's file, stored as numbered pieces (`dataset_parts`) and read back as a file.

Readers get a seekable binary file object that fetches one piece at a time, so training,
batch prediction and downloads hold a megabyte of the file in memory, not the file; pandas,
pyarrow and zipfile read it as they would a file on disk. Writers add pieces as the bytes
come, hashing them on the way.
"""

import hashlib
import io
from collections.abc import Callable, Iterator
from typing import BinaryIO

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from app.db.models import DatasetPart
from app.db.session import Database

PART_BYTES = 1 << 20
# The reader keeps the current piece; its buffer need not hold another copy of it.
_READ_BUFFER = 64 << 10


class PartsReader(io.RawIOBase):
    """A read-only, seekable file over pieces fetched by number (`fetch(seq) -> bytes`)."""

    def __init__(self, fetch: Callable[[int], bytes], size: int) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = size
        self._position = 0
        self._cached_seq = -1
        self._cached = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if position < 0:
            raise ValueError("negative seek position")
        self._position = position
        return position

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._position >= self._size:
            return 0
        seq, start = divmod(self._position, PART_BYTES)
        if seq != self._cached_seq:
            self._cached = self._fetch(seq)
            self._cached_seq = seq
        piece = self._cached[start : start + len(buffer)]
        if not piece:
            raise OSError(f"the stored file ends early, at byte {self._position} of {self._size}")
        view = memoryview(buffer).cast("B")
        view[: len(piece)] = piece
        self._position += len(piece)
        return len(piece)


def _fetch_in(session: Session, dataset_id: str) -> Callable[[int], bytes]:
    def fetch(seq: int) -> bytes:
        content = session.scalar(
            select(DatasetPart.content).where(
                DatasetPart.dataset_id == dataset_id, DatasetPart.seq == seq
            )
        )
        return bytes(content or b"")

    return fetch


def open_in(session: Session, dataset_id: str, size: int) -> BinaryIO:
    """The file, read through `session` (valid while the session is)."""
    return io.BufferedReader(PartsReader(_fetch_in(session, dataset_id), size), _READ_BUFFER)


def open_detached(database: Database, dataset_id: str, size: int) -> BinaryIO:
    """The file, each piece read in a short read transaction of its own: for a reader that
    takes minutes (a batch prediction), which should not pin one snapshot all that time.
    The dataset's delete is refused while a job reading it is active."""

    def fetch(seq: int) -> bytes:
        with database.read_scope() as session:
            return _fetch_in(session, dataset_id)(seq)

    return io.BufferedReader(PartsReader(fetch, size), _READ_BUFFER)


def iter_pieces(database: Database, dataset_id: str) -> Iterator[bytes]:
    """The file's pieces in order, each fetched in its own read transaction (downloads)."""
    seq = 0
    while True:
        with database.read_scope() as session:
            content = _fetch_in(session, dataset_id)(seq)
        if not content:
            return
        yield content
        seq += 1


def write(session: Session, dataset_id: str, source: BinaryIO | bytes) -> tuple[int, str]:
    """Store `source` (bytes, or a file read from where it stands) as the dataset's pieces;
    returns its size and sha256."""
    stream = io.BytesIO(source) if isinstance(source, bytes) else source
    digest = hashlib.sha256()
    size = seq = 0
    while piece := stream.read(PART_BYTES):
        session.execute(insert(DatasetPart).values(dataset_id=dataset_id, seq=seq, content=piece))
        digest.update(piece)
        size += len(piece)
        seq += 1
    return size, digest.hexdigest()


def remove(session: Session, dataset_id: str) -> None:
    session.execute(delete(DatasetPart).where(DatasetPart.dataset_id == dataset_id))


class PieceWriter:
    """Bytes written in order and stored a piece at a time, each piece in a short write
    transaction of its own (a long job must not hold SQLite's write lock for minutes). The
    pieces stay invisible until a dataset row with their id is committed; `discard` removes
    them when the job ends without one."""

    def __init__(self, database: Database, dataset_id: str) -> None:
        self.database = database
        self.dataset_id = dataset_id
        self.size = 0
        self._digest = hashlib.sha256()
        self._buffer = bytearray()
        self._seq = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= PART_BYTES:
            self._store(bytes(self._buffer[:PART_BYTES]))
            del self._buffer[:PART_BYTES]

    def close(self) -> str:
        """Store what is left; returns the file's sha256."""
        if self._buffer:
            self._store(bytes(self._buffer))
            self._buffer.clear()
        return self._digest.hexdigest()

    def discard(self) -> None:
        self._buffer.clear()
        with self.database.session_scope() as session:
            remove(session, self.dataset_id)

    def _store(self, piece: bytes) -> None:
        with self.database.session_scope() as session:
            session.execute(
                insert(DatasetPart).values(dataset_id=self.dataset_id, seq=self._seq, content=piece)
            )
        self._digest.update(piece)
        self.size += len(piece)
        self._seq += 1
