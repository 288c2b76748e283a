"""Uploads bounded while they decode: bombs, huge tables, crafted headers, duplicate names,
hostile file names. Every refusal is a 422 problem naming the file, the bound and its setting,
and nothing is stored."""

import hashlib
import io
import json
import logging
import re
import resource
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from app.config import Settings
from app.db.session import Database
from app.main import create_app
from app.ml import frames
from app.ml.errors import DataError
from app.ml.frames import DecodeLimits
from app.services import datasets as datasets_service
from tests.helpers import assert_problem, upload

CSV = "text/csv"
JSONL = "application/x-ndjson"
BINARY = "application/octet-stream"
MiB = 1024 * 1024

MakeClient = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[MakeClient]:
    """A client whose settings have the given bounds (small, so that the tests stay fast)."""
    clients: list[TestClient] = []

    def make(**bounds: Any) -> TestClient:
        limited = settings.model_copy(update=bounds)
        client = TestClient(create_app(limited), raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def refused(
    client: TestClient, name: str, content: bytes, media: str, *fragments: str
) -> dict[str, Any]:
    """The upload is a 422 invalid_upload whose detail names the file and each fragment."""
    body = assert_problem(upload(client, name, content, media), 422, "invalid_upload")
    assert body["detail"].startswith(f"{name}: "), body
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    assert client.get("/v1/datasets").json()["data"] == []
    return body


def parquet_bytes(table: pa.Table, **options: Any) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, **options)
    return buffer.getvalue()


def npz_bytes(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def npy_header(descr: str, shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def zip_of(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@contextmanager
def peak_memory() -> Iterator[dict[str, int]]:
    """Peak Python/NumPy allocations (tracemalloc) and growth of the process's peak RSS."""
    found: dict[str, int] = {}
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        yield found
    finally:
        found["traced"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        found["rss_growth"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before


class TestParquet:
    def test_more_rows_than_allowed_are_refused_from_the_footer(
        self, make_client: MakeClient
    ) -> None:
        client = make_client(max_dataset_rows=10)
        content = parquet_bytes(pa.table({"x": list(range(11))}))
        refused(
            client,
            "data.parquet",
            content,
            BINARY,
            "11 rows, over the limit of 10 (GRAFT_MAX_DATASET_ROWS)",
        )

    def test_fifty_million_zeros_are_refused_before_they_decode(
        self, make_client: MakeClient
    ) -> None:
        # 50,000,000 int64 zeros (400 MB decoded) compress to a few hundred KB.
        buffer = io.BytesIO()
        zeros = pa.table({"a": pa.array(np.zeros(1_000_000, dtype=np.int64))})
        with pq.ParquetWriter(buffer, zeros.schema, compression="zstd") as writer:
            for _ in range(50):
                writer.write_table(zeros)
        content = buffer.getvalue()
        assert len(content) < 1 * MiB
        client = make_client(max_dataset_rows=10**9, max_decoded_bytes=64 * MiB)
        with peak_memory() as memory:
            body = refused(
                client, "bomb.parquet", content, BINARY, "footer", "(GRAFT_MAX_DECODED_BYTES)"
            )
        assert f"over the limit of {64 * MiB}" in body["detail"]
        assert memory["rss_growth"] < 150 * MiB, memory
        # With the default bounds, its row count alone is refused.
        default = make_client()
        refused(
            default,
            "bomb.parquet",
            content,
            BINARY,
            "50000000 rows, over the limit of 10000000 (GRAFT_MAX_DATASET_ROWS)",
        )

    def test_a_repeated_text_is_measured_not_expanded(self, make_client: MakeClient) -> None:
        # One 1000-byte string over 1,000,000 rows: a dictionary page of 1 KB, 1 GB decoded.
        # The stored schema says plain strings, so only the pages are dictionary-encoded.
        rows = 1_000_000
        column = pa.DictionaryArray.from_arrays(
            pa.array(np.zeros(rows, dtype=np.int32)), pa.array(["x" * 1000])
        )
        content = parquet_bytes(pa.table({"s": column}), store_schema=False, compression="zstd")
        assert len(content) < 1 * MiB
        client = make_client(max_decoded_bytes=100 * MiB)
        pool = pa.default_memory_pool()
        arrow_before = pool.max_memory() or 0
        with peak_memory() as memory:
            body = refused(
                client,
                "text.parquet",
                content,
                BINARY,
                f"over the limit of {100 * MiB} (GRAFT_MAX_DECODED_BYTES)",
            )
        # The decoded size (the text, its offsets, the indices), found without decoding.
        found = re.search(r"decodes to at least (\d+) bytes", body["detail"])
        assert found and int(found.group(1)) > 1_000_000_000, body
        assert memory["rss_growth"] < 300 * MiB, memory
        assert (pool.max_memory() or 0) - arrow_before < 100 * MiB

    def test_a_long_cell_is_refused(self, make_client: MakeClient) -> None:
        client = make_client(max_cell_bytes=10)
        content = parquet_bytes(pa.table({"x": [1, 2], "s": ["short", "elevenbytes"]}))
        refused(
            client,
            "cells.parquet",
            content,
            BINARY,
            "row 2, column 's': a cell of 11 bytes, over the limit of 10 (GRAFT_MAX_CELL_BYTES)",
        )

    def test_more_columns_than_allowed(self, make_client: MakeClient) -> None:
        client = make_client(max_dataset_columns=3)
        content = parquet_bytes(pa.table({name: [1] for name in "abcd"}))
        refused(
            client,
            "wide.parquet",
            content,
            BINARY,
            "4 columns, over the limit of 3 (GRAFT_MAX_DATASET_COLUMNS)",
        )

    def test_duplicate_column_names(self, client: TestClient) -> None:
        table = pa.Table.from_arrays([pa.array([1, 2]), pa.array([3, 4])], names=["x", "x"])
        refused(client, "dup.parquet", parquet_bytes(table), BINARY, "duplicate column names: 'x'")

    def test_garbage_is_422(self, client: TestClient) -> None:
        refused(client, "junk.parquet", b"PAR1" + b"\x00" * 100 + b"PAR1", BINARY, "Parquet")

    def test_categories_and_dtypes_survive(self, client: TestClient) -> None:
        frame = pd.DataFrame(
            {
                "x": [1.5, 2.5, 3.5],
                "n": [1, 2, 3],
                "s": ["a", None, "c"],
                "t": pd.Categorical(["u", "v", "u"], categories=["u", "v", "w"]),
            }
        )
        buffer = io.BytesIO()
        frame.to_parquet(buffer, index=False)
        read = frames.read_frame(buffer.getvalue(), "parquet")
        pd.testing.assert_frame_equal(read, pd.read_parquet(io.BytesIO(buffer.getvalue())))
        response = upload(client, "ok.parquet", buffer.getvalue(), BINARY)
        assert response.status_code == 201, response.text
        assert [c["dtype"] for c in response.json()["columns"]] == [
            "float64",
            "int64",
            "string",
            "category",
        ]


def zeros_npz(count: int, side: int = 32) -> bytes:
    """An .npz whose X is count x side x side uint8 zeros, deflated as it is written."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("X.npy", "w", force_zip64=True) as member:
            member.write(npy_header("|u1", (count, side, side)))
            block = bytes(MiB)
            left = count * side * side
            while left:
                member.write(block[: min(left, MiB)])
                left -= min(left, MiB)
        with archive.open("y.npy", "w") as member:
            np.save(member, np.zeros(count, dtype=np.uint8))
    return buffer.getvalue()


class TestNpz:
    def test_a_compressed_bomb_is_refused_before_it_expands(self, make_client: MakeClient) -> None:
        content = zeros_npz(100_000)  # X is 100 MB of zeros, the file about 100 KB
        assert len(content) < 1 * MiB
        client = make_client(max_decoded_bytes=10 * MiB)
        with peak_memory() as memory:
            refused(
                client,
                "bomb.npz",
                content,
                BINARY,
                f"over the limit of {10 * MiB} (GRAFT_MAX_DECODED_BYTES)",
            )
        assert memory["traced"] < 10 * MiB, memory

    def test_the_float32_copy_counts(self, make_client: MakeClient) -> None:
        content = zeros_npz(10_000)  # 10 MB of uint8, 40 MB more as float32 images
        client = make_client(max_decoded_bytes=30 * MiB)
        refused(
            client,
            "copy.npz",
            content,
            BINARY,
            "X declares shape 10000x32x32 of uint8, 51200000 bytes with its float32 copy",
            "(GRAFT_MAX_DECODED_BYTES)",
        )

    @pytest.mark.parametrize(
        ("shape", "fragment"),
        [
            ((2**40, 2**40), "1099511627776 rows, over the limit of 10000000"),
            ((4, 2**40, 2**40), "(GRAFT_MAX_DECODED_BYTES)"),
            ((4, -1, 8), "cannot be negative"),
            ((1000, 8, 8), "but holds 100; is it truncated?"),
        ],
    )
    def test_a_crafted_header_is_422_without_allocating(
        self, client: TestClient, shape: tuple[int, ...], fragment: str
    ) -> None:
        x = npy_header("<f8", shape) + b"\x00" * 100
        y = npz_bytes(y=np.zeros(4))
        with zipfile.ZipFile(io.BytesIO(y)) as labels:
            y_member = labels.read("y.npy")
        with peak_memory() as memory:
            refused(
                client, "crafted.npz", zip_of({"X.npy": x, "y.npy": y_member}), BINARY, fragment
            )
        assert memory["traced"] < 10 * MiB, memory

    def test_a_header_that_is_not_numpy(self, client: TestClient) -> None:
        x = b"\x93NUMPY\x01\x00\x10\x00{'descr': 12}   \n" + b"\x00" * 16
        refused(
            client,
            "odd.npz",
            zip_of({"X.npy": x, "y.npy": b"nonsense"}),
            BINARY,
            "not a readable NumPy array",
        )

    def test_a_truncated_archive(self, client: TestClient) -> None:
        content = npz_bytes(X=np.zeros((20, 8, 8)), y=np.zeros(20))
        refused(client, "cut.npz", content[: len(content) // 2], BINARY, "not an .npz archive")

    def test_damaged_compressed_data(self, client: TestClient) -> None:
        buffer = io.BytesIO()
        rng = np.random.default_rng(0)
        np.savez_compressed(buffer, X=rng.integers(0, 9, (20, 8, 8)), y=np.zeros(20))
        content = bytearray(buffer.getvalue())
        for at in range(60, 400, 7):  # scribble over X's deflate stream, not the directory
            content[at] ^= 0x5A
        refused(client, "damaged.npz", bytes(content), BINARY, "is it truncated?")

    def test_a_long_label(self, make_client: MakeClient) -> None:
        client = make_client(max_cell_bytes=10)
        content = npz_bytes(X=np.zeros((2, 4, 4)), y=np.array(["short", "x" * 11]))
        refused(
            client,
            "labels.npz",
            content,
            BINARY,
            "y[1] is a label of 11 bytes, over the limit of 10 (GRAFT_MAX_CELL_BYTES)",
        )

    def test_more_images_than_rows_allowed(self, make_client: MakeClient) -> None:
        client = make_client(max_dataset_rows=5)
        content = npz_bytes(X=np.zeros((6, 4, 4)), y=np.zeros(6))
        refused(
            client,
            "many.npz",
            content,
            BINARY,
            "X holds 6 rows, over the limit of 5 (GRAFT_MAX_DATASET_ROWS)",
        )

    def test_within_the_bounds_it_is_stored(self, make_client: MakeClient) -> None:
        client = make_client(max_decoded_bytes=1 * MiB, max_dataset_rows=10)
        content = npz_bytes(X=np.zeros((10, 8, 8), dtype=np.uint8), y=np.arange(10))
        response = upload(client, "fine.npz", content, BINARY)
        assert response.status_code == 201, response.text
        assert response.json()["rows"] == 10


class TestCsv:
    def test_more_columns_than_allowed(self, make_client: MakeClient) -> None:
        client = make_client(max_dataset_columns=3)
        refused(
            client,
            "wide.csv",
            b"a,b,c,d\n1,2,3,4\n",
            CSV,
            "at least 4 columns in the header, over the limit of 3 (GRAFT_MAX_DATASET_COLUMNS)",
        )

    def test_a_header_of_a_million_names_is_never_split(self, client: TestClient) -> None:
        header = b",".join(b"c%d" % i for i in range(1_000_000))
        with peak_memory() as memory:
            refused(
                client,
                "names.csv",
                header + b"\n" + b"1\n",
                CSV,
                "at least 10001 columns",
                "(GRAFT_MAX_DATASET_COLUMNS)",
            )
        # The body itself (7 MB) passes through the multipart parser; no list of names is built.
        assert memory["traced"] < 40 * MiB, memory

    def test_quoted_names_hold_commas_and_newlines(self, make_client: MakeClient) -> None:
        client = make_client(max_dataset_columns=3)
        content = b'\xef\xbb\xbf\n"x,1","y\n2",z\n1,2,3\n'
        response = upload(client, "quoted.csv", content, CSV)
        assert response.status_code == 201, response.text
        assert [c["name"] for c in response.json()["columns"]] == ["x,1", "y\n2", "z"]

    def test_more_rows_than_allowed(self, make_client: MakeClient) -> None:
        client = make_client(max_dataset_rows=10)
        refused(
            client,
            "long.csv",
            b"a,b\n" + b"1,2\n" * 11,
            CSV,
            "at least 11 rows, over the limit of 10 (GRAFT_MAX_DATASET_ROWS)",
        )

    def test_rows_are_counted_across_chunks(self, make_client: MakeClient) -> None:
        client = make_client(max_dataset_rows=150_000)
        refused(
            client,
            "longer.csv",
            b"a,b\n" + b"1,2\n" * 250_000,
            CSV,
            "over the limit of 150000 (GRAFT_MAX_DATASET_ROWS)",
        )

    @pytest.mark.parametrize(
        ("content", "fragment"),
        [
            (b"a,b\n1,2\n3,hello world!\n", "row 2, column 'b': a cell of 12 bytes"),
            ("a,b\n1,éééééé\n".encode(), "row 1, column 'b': a cell of 12 bytes"),
            (b'a,b\n1,"quoted, and long"\n', "a cell of 16 bytes"),
            (b"a,abcdefghijk\n1,2\n", "a column name of 11 bytes"),
            (b'a,"' + b'""' * 100 + b'"\n1,2\n', "the header's field 2 is longer than 10 bytes"),
        ],
    )
    def test_a_cell_over_the_limit(
        self, make_client: MakeClient, content: bytes, fragment: str
    ) -> None:
        client = make_client(max_cell_bytes=10)
        refused(
            client,
            "cells.csv",
            content,
            CSV,
            fragment,
            "over the limit of 10 (GRAFT_MAX_CELL_BYTES)",
        )

    def test_decoded_memory(self, make_client: MakeClient) -> None:
        client = make_client(max_decoded_bytes=1000)
        refused(
            client,
            "mem.csv",
            b"a,b\n" + b"1,2\n" * 1000,
            CSV,
            "16000 bytes of memory",
            "over the limit of 1000 (GRAFT_MAX_DECODED_BYTES)",
        )

    def test_duplicate_column_names_are_not_renamed(self, client: TestClient) -> None:
        refused(
            client,
            "dup.csv",
            b"a,b,a,b,c\n1,2,3,4,5\n",
            CSV,
            "duplicate column names: 'a', 'b'",
        )

    def test_chunked_reading_matches_one_read(self) -> None:
        rng = np.random.default_rng(0)
        rows = 250_000  # three chunks of 100,000 rows
        frame = pd.DataFrame(
            {
                "i": rng.integers(0, 100, rows),
                "f": rng.normal(size=rows),
                "s": rng.choice(["a", "b", "c"], rows),
            }
        )
        frame.loc[200_000, "i"] = np.nan
        frame.loc[5, "s"] = None
        content = frame.to_csv(index=False).encode()
        read = frames.read_frame(content, "csv")
        pd.testing.assert_frame_equal(read, pd.read_csv(io.BytesIO(content)))


class TestJsonLines:
    def test_nesting_a_hundred_thousand_deep(self, client: TestClient) -> None:
        line = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n"
        refused(
            client,
            "deep.jsonl",
            line,
            JSONL,
            "line 1 nests arrays or objects at least 65 deep, deeper than the limit of 64",
        )

    def test_brackets_inside_strings_do_not_count(self, client: TestClient) -> None:
        line = b'{"a": "' + b"[{" * 100 + b'", "b": 1}\n'
        response = upload(client, "brackets.jsonl", line, JSONL)
        assert response.status_code == 201, response.text

    @pytest.mark.parametrize(
        ("content", "key"),
        [
            (b'{"a": 1, "b": 2}\n{"a": 1, "a": 2}\n', "line 2 repeats the key 'a'"),
            (b'{"a": {"b": 1, "b": 2}}\n', "line 1 repeats the key 'b'"),
            (b'{"t": "12:30", "t": "13:30"}\n', "line 1 repeats the key 't'"),
        ],
    )
    def test_a_repeated_key(self, client: TestClient, content: bytes, key: str) -> None:
        refused(client, "dup.jsonl", content, JSONL, key)

    def test_colons_in_strings_are_not_keys(self, client: TestClient) -> None:
        content = b'{"t": "12:30", "u": "http://x"}\n{"t": "13:00", "u": "a:b:c"}\n'
        response = upload(client, "times.jsonl", content, JSONL)
        assert response.status_code == 201, response.text
        assert [c["name"] for c in response.json()["columns"]] == ["t", "u"]

    @pytest.mark.parametrize(
        ("bounds", "content", "fragment"),
        [
            (
                {"max_dataset_columns": 2},
                b'{"a": 1}\n{"a": 1, "b": 2, "c": 3}\n',
                "at least 3 columns (keys) by line 2, over the limit of 2 "
                "(GRAFT_MAX_DATASET_COLUMNS)",
            ),
            (
                {"max_dataset_rows": 2},
                b'{"a": 1}\n' * 3,
                "at least 3 rows, over the limit of 2 (GRAFT_MAX_DATASET_ROWS)",
            ),
            (
                {"max_cell_bytes": 5},
                b'{"a": "abc"}\n{"a": "abcdef"}\n',
                "row 2, column 'a': a cell of 6 bytes, over the limit of 5 (GRAFT_MAX_CELL_BYTES)",
            ),
            (
                {"max_cell_bytes": 5},
                b'{"abcdef": 1}\n',
                "line 1: a key of 6 bytes",
            ),
        ],
    )
    def test_bounds(
        self, make_client: MakeClient, bounds: dict[str, int], content: bytes, fragment: str
    ) -> None:
        refused(make_client(**bounds), "bounded.jsonl", content, JSONL, fragment)

    def test_a_huge_integer_is_422(self, client: TestClient) -> None:
        refused(client, "int.jsonl", b'{"a": ' + b"1" * 5000 + b"}\n", JSONL, "line 1")

    def test_chunked_reading_matches_one_read(self) -> None:
        records: list[dict[str, Any]] = [
            {"i": k % 9} if k % 3 else {"i": k % 9, "late": "x"} for k in range(25_000)
        ]
        records[24_000]["new"] = 1.5  # a column that first appears in the third chunk
        content = ("\n".join(json.dumps(r) for r in records) + "\n").encode()
        read = frames.read_frame(content, "jsonl")
        pd.testing.assert_frame_equal(read, pd.DataFrame.from_records(records))


class TestFileNames:
    @pytest.mark.parametrize(
        ("raw", "clean"),
        [
            ("../../etc/passwd", "passwd"),
            ("..\\..\\windows\\win.ini", "win.ini"),
            ("/abs/path/data.csv", "data.csv"),
            ("da\x00ta\x1b[31m.csv", "data[31m.csv"),
            ("evil\u202etxt.csv", "eviltxt.csv"),
            ("folder/..", "upload"),
            ("  ", "upload"),
            ("", "upload"),
            (None, "upload"),
            ("x" * 300 + ".parquet", "x" * 192 + ".parquet"),
            ("y" * 300, "y" * 200),
        ],
    )
    def test_clean_filename(self, raw: str | None, clean: str) -> None:
        assert datasets_service.clean_filename(raw) == clean

    def test_a_path_traversal_name_is_stored_as_its_last_part(
        self, client: TestClient, database: Database
    ) -> None:
        response = upload(client, "../../etc/passwd.csv", b"a,b\n1,2\n", CSV)
        assert response.status_code == 201, response.text
        assert response.json()["name"] == "passwd"
        with database.session_scope() as session:
            dataset = datasets_service.get(session, response.json()["id"])
            assert dataset.origin == {"type": "upload", "filename": "passwd.csv"}

    def test_a_long_name_is_cut_to_200_characters(self, client: TestClient) -> None:
        response = upload(client, "n" * 400 + ".csv", b"a,b\n1,2\n", CSV)
        assert response.status_code == 201, response.text
        assert response.json()["name"] == "n" * 196

    def test_refusals_name_the_clean_file_name(self, client: TestClient) -> None:
        body = assert_problem(
            upload(client, "../../x/bad.csv", b"a,a\n1,2\n", CSV), 422, "invalid_upload"
        )
        assert body["detail"].startswith("bad.csv: duplicate column names")


class TestUnexpectedErrors:
    def test_an_unexpected_error_is_a_generic_422_and_logged(
        self, client: TestClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        def explode(stream: Any, limits: Any) -> Any:
            raise RuntimeError("at /srv/graft/secret.py: SELECT * FROM datasets")

        monkeypatch.setattr(frames, "_read_csv", explode)
        with caplog.at_level(logging.ERROR, logger="app.services.datasets"):
            body = refused(client, "any.csv", b"a,b\n1,2\n", CSV, "could not be read as CSV")
        for leak in ("secret", "SELECT", "/srv", "Traceback", "RuntimeError"):
            assert leak not in json.dumps(body)
        assert any("SELECT" in str(record.exc_info) for record in caplog.records)

    def test_memory_errors_too(self, client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
        def exhaust(stream: Any, limits: Any) -> Any:
            raise MemoryError

        monkeypatch.setattr(frames, "_read_jsonl", exhaust)
        refused(client, "any.jsonl", b'{"a": 1}\n', JSONL, "could not be read as JSON Lines")


class TestStoredDatasets:
    def test_stored_bytes_and_hash_are_the_upload(
        self, client: TestClient, database: Database
    ) -> None:
        content = b"a,b\n" + b"1,x\n" * 300_000  # spills the upload to disk (over 1 MiB)
        response = upload(client, "big.csv", content, CSV)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["rows"] == 300_000
        assert body["size_bytes"] == len(content)
        assert body["sha256"] == hashlib.sha256(content).hexdigest()
        with database.session_scope() as session:
            frame = datasets_service.load_data(session, body["id"])
        assert isinstance(frame, pd.DataFrame) and frame.shape == (300_000, 2)

    def test_stored_datasets_load_with_generous_limits(self) -> None:
        # Jobs decode stored datasets, checked when they were uploaded: no size bound applies.
        content = b"a,b\n" + b"1,2\n" * 20
        with pytest.raises(DataError):
            frames.read_frame(content, "csv", DecodeLimits(max_dataset_rows=10))
        assert len(frames.read_frame(content, "csv", DecodeLimits.generous())) == 20
