"""Datasets' files in pieces: the migration that moved them, and the file-like reader."""

import hashlib
import io
import os
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text

from app.db import migrate
from app.db.session import Database, make_engine
from app.ml import frames
from app.services import dataset_files
from app.services.dataset_files import PART_BYTES, PartsReader

_DATASET = (
    "INSERT INTO datasets (id, name, format, rows, columns, size_bytes, sha256, origin,"
    " created_at, content) VALUES (:id, 'x', 'csv', 1, '[]', :size, :sha, '{}',"
    " '2026-12-01 00:00:00', :content)"
)


def test_the_upgrade_moves_every_file_into_pieces_and_the_downgrade_back(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, "c4e6a8b0d2f4")
    files = {
        "ds_big": os.urandom(2 * PART_BYTES + 123),
        "ds_small": b"a,b\n1,2\n",
        "ds_edge": os.urandom(PART_BYTES),
    }
    engine = make_engine(url)
    with engine.begin() as connection:
        for dataset_id, content in files.items():
            connection.execute(
                text(_DATASET),
                {
                    "id": dataset_id,
                    "size": len(content),
                    "sha": hashlib.sha256(content).hexdigest(),
                    "content": content,
                },
            )
    engine.dispose()
    migrate.upgrade(url)
    database = Database(url)
    with database.read_scope() as session:
        for dataset_id, content in files.items():
            pieces = session.execute(
                text(
                    "SELECT seq, length(content) FROM dataset_parts"
                    " WHERE dataset_id = :id ORDER BY seq"
                ),
                {"id": dataset_id},
            ).all()
            assert [seq for seq, _ in pieces] == list(range(len(pieces)))
            assert all(size == PART_BYTES for _, size in pieces[:-1])
            assert dataset_files.open_in(session, dataset_id, len(content)).read() == content
    assert b"".join(dataset_files.iter_pieces(database, "ds_big")) == files["ds_big"]
    database.dispose()
    migrate.downgrade(url, "c4e6a8b0d2f4")
    engine = make_engine(url)
    with engine.connect() as connection:
        for dataset_id, content in files.items():
            stored = connection.execute(
                text("SELECT content FROM datasets WHERE id = :id"), {"id": dataset_id}
            ).scalar_one()
            assert bytes(stored) == content
    engine.dispose()


def _reader(content: bytes) -> tuple[io.BufferedReader, list[int]]:
    fetched: list[int] = []

    def fetch(seq: int) -> bytes:
        fetched.append(seq)
        return content[seq * PART_BYTES : (seq + 1) * PART_BYTES]

    return io.BufferedReader(PartsReader(fetch, len(content)), 1 << 16), fetched


def test_the_reader_is_a_seekable_file_that_fetches_only_what_is_read() -> None:
    content = os.urandom(3 * PART_BYTES + 10)
    reader, fetched = _reader(content)
    reader.seek(2 * PART_BYTES + 5)
    assert reader.read(10) == content[2 * PART_BYTES + 5 : 2 * PART_BYTES + 15]
    assert fetched == [2]
    reader.seek(-4, io.SEEK_END)
    assert reader.read() == content[-4:]
    reader.seek(PART_BYTES - 3)
    assert reader.read(6) == content[PART_BYTES - 3 : PART_BYTES + 3]  # across two pieces
    reader.seek(0)
    assert reader.read() == content
    assert reader.read(5) == b""
    with pytest.raises(ValueError):
        reader.seek(-1)


def test_a_file_that_ends_early_is_an_error_not_a_short_read() -> None:
    content = os.urandom(PART_BYTES + 100)
    reader = io.BufferedReader(
        PartsReader(lambda seq: content[:PART_BYTES] if seq == 0 else b"", len(content))
    )
    with pytest.raises(OSError, match="ends early"):
        reader.read()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_chunks_read_back_what_read_frame_reads(fmt: str) -> None:
    frame = pd.DataFrame(
        {"id": range(2_500), "x": [i / 7 for i in range(2_500)], "s": ["a", "b"] * 1_250}
    )
    if fmt == "csv":
        content = frame.to_csv(index=False).encode()
    elif fmt == "jsonl":
        content = frame.to_json(orient="records", lines=True).encode()
    else:
        content = frames.to_parquet_bytes(frame)
    whole = frames.read_frame(content, fmt)
    chunks = list(frames.iter_frames(io.BytesIO(content), fmt, 1_000))
    assert [len(chunk) for chunk in chunks] == (
        [1_000, 1_000, 500] if fmt != "parquet" else [len(c) for c in chunks]
    )
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole, check_dtype=False)
