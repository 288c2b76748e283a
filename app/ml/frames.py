"""Reading tabular files into DataFrames, and the datasets that ship with scikit-learn.

Files are read from a binary file object (an upload's spooled file, or the stored bytes) and
bounded while they decode (`DecodeLimits`): Parquet by its footer before any data page is read,
CSV and JSON Lines chunk by chunk, so a file that expands far beyond its size is refused early.

Three table formats decoded under the same bounds (DecodeLimits), so that a limit means
the same thing whatever the file; long because each refusal names where and why.
"""

import codecs
import csv
import io
import json
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from app.ml.errors import DataError

FORMATS = ("csv", "parquet", "jsonl")
CHUNK_BYTES = 1 << 20
# CSV chunks hold about this many cells; JSON Lines chunks this many records or cells.
_CHUNK_CELLS = 1_000_000
_JSONL_CHUNK_RECORDS = 10_000
_JSONL_CHUNK_CELLS = 250_000  # parsed JSON values are Python objects: fewer per chunk


@dataclass(frozen=True)
class DecodeLimits:
    """What one file may decode to. Field names match the settings that set them for uploads."""

    max_dataset_rows: int = 10_000_000
    max_dataset_columns: int = 10_000
    max_cell_bytes: int = 65_536  # the longest text cell (or column name), in UTF-8 bytes
    max_decoded_bytes: int = 1024**3  # memory the decoded table or arrays may take
    max_depth: int = 64  # JSON Lines: arrays and objects nested at most this deep

    @classmethod
    def generous(cls) -> "DecodeLimits":
        """For files that were checked when they were stored: no size bounds, a safe depth."""
        return cls(sys.maxsize, sys.maxsize, sys.maxsize, sys.maxsize, max_depth=512)


class BoundExceeded(DataError):
    """A file over one of the `DecodeLimits`; `bound` names the field of DecodeLimits."""

    def __init__(self, message: str, bound: str) -> None:
        super().__init__(message, code="too_large")
        self.bound = bound


Source = bytes | bytearray | memoryview | BinaryIO


def as_stream(source: Source) -> BinaryIO:
    """A seekable binary file object over `source` (bytes are wrapped, files passed through)."""
    if isinstance(source, bytes | bytearray | memoryview):
        return io.BytesIO(source)
    return source


def is_blank(stream: BinaryIO) -> bool:
    """Whether the file holds nothing but ASCII whitespace (read until the first other byte)."""
    stream.seek(0)
    while chunk := stream.read(CHUNK_BYTES):
        if chunk.strip():
            return False
    return True


def read_frame(source: Source, fmt: str, limits: DecodeLimits | None = None) -> pd.DataFrame:
    """Parse `source` as `fmt` (csv | parquet | jsonl); DataError names what is wrong and where.

    BoundExceeded (a DataError) when the file is over one of `limits` (default: DecodeLimits()).
    """
    stream = as_stream(source)
    limits = limits or DecodeLimits()
    if is_blank(stream):
        raise DataError("the file is empty", code="empty_file")
    if fmt == "csv":
        frame = _read_csv(stream, limits)
    elif fmt == "parquet":
        frame = _read_parquet(stream, limits)
    elif fmt == "jsonl":
        frame = _read_jsonl(stream, limits)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if frame.shape[1] == 0:
        raise DataError("the file has no columns", code="empty_file")
    if frame.shape[0] == 0:
        raise DataError("the file has a header but no rows", code="empty_file")
    blank = [
        (position, str(c))
        for position, c in enumerate(frame.columns, start=1)
        if str(c).strip() == "" or str(c).startswith("Unnamed:")
    ]
    if blank:
        raise DataError(
            f"every column needs a name; found unnamed column(s) {[c for _, c in blank][:10]} "
            f"at position(s) {[p for p, _ in blank][:10]}"
        )
    frame.columns = [str(c) for c in frame.columns]
    return frame


def iter_frames(stream: BinaryIO, fmt: str, rows: int) -> Iterator[pd.DataFrame]:
    """A stored file (checked when it was stored) as DataFrames of at most `rows` rows each,
    in order, decoding one at a time: a pass over a file of millions of rows holds one chunk
    of it in memory. Columns are named as `read_frame` names them."""
    limits = DecodeLimits.generous()
    stream.seek(0)
    if fmt == "csv":
        names = _csv_header(stream, limits)
        stream.seek(0)
        with pd.read_csv(
            stream, encoding="utf-8-sig", header=0, names=names, chunksize=rows
        ) as reader:
            yield from reader
    elif fmt == "parquet":
        parquet = pq.ParquetFile(stream)
        for batch in parquet.iter_batches(batch_size=rows, use_pandas_metadata=True):
            frame = batch.to_pandas()
            frame.columns = [str(c) for c in frame.columns]
            yield frame
    elif fmt == "jsonl":
        text = io.TextIOWrapper(stream, encoding="utf-8-sig")
        try:
            for chunk in _jsonl_chunks(text, limits, rows):
                yield chunk.reset_index(drop=True)
        finally:
            text.detach()
    else:
        raise ValueError(f"cannot read {fmt!r} files in chunks")


def check_names(names: list[str], limits: DecodeLimits) -> None:
    """The column names against the bounds: how many, how long, none repeated."""
    if len(names) > limits.max_dataset_columns:
        raise BoundExceeded(
            f"{len(names)} columns, over the limit of {limits.max_dataset_columns}",
            "max_dataset_columns",
        )
    for name in names:
        size = _utf8_size(name)
        if size > limits.max_cell_bytes:
            raise BoundExceeded(
                f"a column name of {size} bytes ({name[:20]!r}...), "
                f"over the limit of {limits.max_cell_bytes}",
                "max_cell_bytes",
            )
    repeated = [name for name, count in Counter(names).items() if count > 1 and name.strip()]
    if repeated:
        shown = ", ".join(repr(name) for name in repeated[:10])
        raise DataError(f"duplicate column names: {shown}; every column needs a name of its own")


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


class _Tally:
    """Rows and memory of the chunks decoded so far, checked as each chunk arrives."""

    def __init__(self, limits: DecodeLimits) -> None:
        self.limits = limits
        self.rows = 0
        self.bytes = 0

    def add(self, chunk: pd.DataFrame) -> None:
        first = self.rows
        self.rows += len(chunk)
        if self.rows > self.limits.max_dataset_rows:
            raise BoundExceeded(
                f"at least {self.rows} rows, over the limit of {self.limits.max_dataset_rows}",
                "max_dataset_rows",
            )
        check_cells(chunk, self.limits.max_cell_bytes, first_row=first)
        self.bytes += int(chunk.memory_usage(deep=True, index=False).sum())
        if self.bytes > self.limits.max_decoded_bytes:
            raise BoundExceeded(
                f"the rows read so far take {self.bytes} bytes of memory once decoded, "
                f"over the limit of {self.limits.max_decoded_bytes}",
                "max_decoded_bytes",
            )


def check_cells(frame: pd.DataFrame, limit: int, *, first_row: int = 0) -> None:
    """BoundExceeded for the first text cell longer than `limit` UTF-8 bytes."""
    for position, name in enumerate(frame.columns):
        column = frame.iloc[:, position]
        if not (
            pd.api.types.is_object_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype)
        ):
            continue
        found = _long_cell(column, limit)
        if found is not None:
            row, size = found
            raise BoundExceeded(
                f"row {first_row + row + 1}, column {str(name)[:100]!r}: a cell of {size} bytes, "
                f"over the limit of {limit}",
                "max_cell_bytes",
            )


def _long_cell(column: pd.Series, limit: int) -> tuple[int, int] | None:
    """(position, size) of the first str or bytes cell over `limit` bytes, if there is one."""
    try:
        lengths = column.str.len()
    except (AttributeError, TypeError):  # no text in this column
        return None
    chars = lengths.to_numpy(dtype=np.float64, na_value=0.0)
    # A character takes 1 to 4 bytes: only cells over limit/4 characters need encoding.
    for position in np.flatnonzero(chars * 4 > limit):
        value = column.iat[int(position)]
        if isinstance(value, str):
            size = _utf8_size(value)
        elif isinstance(value, bytes):
            size = len(value)
        else:  # a list or dict from JSON: its length is not a text length
            continue
        if size > limit:
            return int(position), size
    return None


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if len(parts) == 1:
        return parts[0]
    return pd.concat(parts, ignore_index=True, sort=False)


def _check_utf8(stream: BinaryIO, what: str) -> None:
    """DataError naming the offset of the first byte that is not UTF-8, read chunk by chunk."""
    stream.seek(0)
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    while True:
        chunk = stream.read(CHUNK_BYTES)
        pending = len(decoder.getstate()[0])
        try:
            decoder.decode(chunk, final=not chunk)
        except UnicodeDecodeError as exc:
            at = offset - pending + exc.start
            raise DataError(f"the {what} is not UTF-8 text (byte {at} is invalid)") from exc
        if not chunk:
            return
        offset += len(chunk)


# ---- CSV -------------------------------------------------------------------------------------

_BOM = codecs.BOM_UTF8
_CSV_SPECIAL = re.compile(rb'[",\r\n]')
_BLANK_LINES = re.compile(rb"(?:[ \t]*[\r\n])+")  # lines pandas skips before a header
_QUOTE, _COMMA = ord('"'), ord(",")


def _read_csv(stream: BinaryIO, limits: DecodeLimits) -> pd.DataFrame:
    _check_utf8(stream, "CSV")
    names = _csv_header(stream, limits)
    check_names(names, limits)
    stream.seek(0)
    rows_per_chunk = max(1, min(100_000, _CHUNK_CELLS // max(1, len(names))))
    tally = _Tally(limits)
    parts: list[pd.DataFrame] = []
    try:
        # The names checked above, not pandas' reading of the header: pandas would rename
        # repeated names ("a", "a.1") where these were refused.
        with pd.read_csv(
            stream, encoding="utf-8-sig", header=0, names=names, chunksize=rows_per_chunk
        ) as reader:
            for chunk in reader:
                tally.add(chunk)
                parts.append(chunk)
    except pd.errors.EmptyDataError as exc:
        raise DataError("the file is empty", code="empty_file") from exc
    except pd.errors.ParserError as exc:
        # pandas' message already names the line: "Expected 4 fields in line 7, saw 5".
        message = str(exc).replace("Error tokenizing data. C error: ", "").strip()
        raise DataError(f"malformed CSV: {message[:300]}") from exc
    if not parts:
        raise DataError("the file is empty", code="empty_file")
    return _concat(parts)


def _csv_header(stream: BinaryIO, limits: DecodeLimits) -> list[str]:
    """The header row's names, read with the csv module once the row is known to be bounded.

    The row is found by a scan of the raw bytes that counts fields (RFC 4180 quoting, as pandas
    reads it) and stops as soon as there are more than `max_dataset_columns` of them or one is
    far longer than `max_cell_bytes`, so a header of millions of names is never split into a
    list. Blank (or blank but for spaces and tabs) lines before the header are skipped, as
    pandas skips them.
    """
    stream.seek(0)
    buffer = bytearray()
    start = field = pos = 0  # the header row, its current field, the scan position
    fields = 1
    quoted = False
    eof = False
    first_chunk = True
    end: int | None = None
    # A quoted field may double its quotes: twice the limit (and its quotes) is surely over.
    longest = 2 * limits.max_cell_bytes + 2

    def more() -> bool:
        """Read on; called once the buffer is scanned, so the current field reaches its end."""
        nonlocal eof, first_chunk, start, field, pos
        if len(buffer) - field > longest:
            too_long()
        chunk = stream.read(CHUNK_BYTES)
        if not chunk:
            eof = True
            return False
        if first_chunk and chunk.startswith(_BOM):
            chunk = chunk[len(_BOM) :]
        first_chunk = False
        if start > CHUNK_BYTES and fields == 1 and field == start:  # past many blank lines
            del buffer[:start]
            pos -= start
            field = start = 0
        buffer.extend(chunk)
        return True

    def too_long() -> None:
        raise BoundExceeded(
            f"the header's field {fields} is longer than {limits.max_cell_bytes} bytes, "
            f"over the limit of {limits.max_cell_bytes}",
            "max_cell_bytes",
        )

    more()
    while end is None:
        if fields == 1 and pos == start == field:  # skip blank lines before the header
            blank = _BLANK_LINES.match(buffer, pos)
            if blank:
                start = field = pos = blank.end()
                if pos >= len(buffer) and more():
                    continue
        if quoted:
            quote = buffer.find(b'"', pos)
            if quote < 0 or quote + 1 >= len(buffer):
                if not eof and more():
                    continue
                if quote < 0:  # an unterminated quote: pandas says so below
                    end = len(buffer)
                    break
            if quote + 1 < len(buffer) and buffer[quote + 1] == _QUOTE:
                pos = quote + 2  # "" inside quotes is one literal quote
            else:
                quoted = False
                pos = quote + 1
            continue
        match = _CSV_SPECIAL.search(buffer, pos)
        if match is None:
            pos = len(buffer)
            if not more():
                end = len(buffer)
            continue
        at = match.start()
        char = buffer[at]
        if char == _QUOTE:
            quoted = at == field  # a quote inside an unquoted field is a plain character
            pos = at + 1
        elif char == _COMMA:
            if at - field > longest:
                too_long()
            fields += 1
            if fields > limits.max_dataset_columns:
                raise BoundExceeded(
                    f"at least {fields} columns in the header, "
                    f"over the limit of {limits.max_dataset_columns}",
                    "max_dataset_columns",
                )
            field = pos = at + 1
        else:
            end = at
    if end - field > longest:
        too_long()
    text = bytes(buffer[start:end]).decode("utf-8")
    if not text:
        return []
    try:
        return next(csv.reader(io.StringIO(text, newline="")), [])
    except csv.Error as exc:
        raise DataError(f"malformed CSV header: {exc}") from exc


# ---- Parquet ---------------------------------------------------------------------------------

# Bytes per value once decoded, by physical type; byte arrays add their data (counted from the
# column chunks' uncompressed sizes, or from the dictionary when they are read below).
_PARQUET_WIDTHS = {"BOOLEAN": 1, "INT32": 4, "INT64": 8, "INT96": 8, "FLOAT": 4, "DOUBLE": 8}


def _read_parquet(stream: BinaryIO, limits: DecodeLimits) -> pd.DataFrame:
    """Refuse from the footer what is over the bounds, then read; text columns as dictionaries
    first, so that a short dictionary repeated over millions of rows is measured, not expanded."""
    stream.seek(0)
    try:
        parquet = pq.ParquetFile(stream)
        meta = parquet.metadata
        schema = parquet.schema_arrow
    except Exception as exc:  # pyarrow raises several unrelated types for bad bytes
        raise DataError(f"not a readable Parquet file ({_brief(exc)}); is it truncated?") from exc
    rows = max(meta.num_rows, 0)
    groups = [meta.row_group(i) for i in range(meta.num_row_groups)]
    rows = max(rows, sum(group.num_rows for group in groups))
    leaves = max(meta.num_columns, len(schema.names))
    if leaves > limits.max_dataset_columns:
        raise BoundExceeded(
            f"{leaves} columns, over the limit of {limits.max_dataset_columns}",
            "max_dataset_columns",
        )
    if rows > limits.max_dataset_rows:
        raise BoundExceeded(
            f"{rows} rows, over the limit of {limits.max_dataset_rows}", "max_dataset_rows"
        )
    check_names([str(name) for name in schema.names], limits)
    widths = [_parquet_width(parquet.schema.column(j)) for j in range(meta.num_columns)]
    estimate = 0
    for group in groups:
        for j in range(group.num_columns):
            chunk = group.column(j)
            values = max(chunk.num_values, group.num_rows, 0)
            estimate += max(chunk.total_uncompressed_size, 0) + values * widths[j]
        if estimate > limits.max_decoded_bytes:
            raise BoundExceeded(
                f"the footer declares data that decodes to at least {estimate} bytes, "
                f"over the limit of {limits.max_decoded_bytes}",
                "max_decoded_bytes",
            )
    text_columns = [field.name for field in schema if _is_text(field.type)]
    try:
        stream.seek(0)
        table = pq.ParquetFile(stream, metadata=meta, read_dictionary=text_columns).read(
            use_pandas_metadata=True
        )
    except Exception as exc:
        raise DataError(f"not a readable Parquet file ({_brief(exc)}); is it truncated?") from exc
    decoded = table.nbytes
    for field in schema:
        column = table.column(field.name)
        if pa.types.is_dictionary(column.type) and _is_text(column.type.value_type):
            size = _dictionary_text(column, field.name, limits)
            if not pa.types.is_dictionary(field.type):
                decoded += size + 8 * len(column)  # its offsets and data once decoded
        if decoded > limits.max_decoded_bytes:
            raise BoundExceeded(
                f"the table decodes to at least {decoded} bytes, "
                f"over the limit of {limits.max_decoded_bytes}",
                "max_decoded_bytes",
            )
    try:
        for field in schema:
            if _is_text(field.type):  # read as a dictionary above: decoded back to its type
                index = table.schema.get_field_index(field.name)
                table = table.set_column(index, field, table.column(index).cast(field.type))
        frame = table.to_pandas()
    except pa.ArrowException as exc:
        raise DataError(f"the Parquet file's data cannot be converted ({_brief(exc)})") from exc
    del table
    decoded = int(frame.memory_usage(deep=True, index=False).sum())
    if decoded > limits.max_decoded_bytes:
        raise BoundExceeded(
            f"the table takes {decoded} bytes of memory once decoded, "
            f"over the limit of {limits.max_decoded_bytes}",
            "max_decoded_bytes",
        )
    return frame


def _parquet_width(column: Any) -> int:
    if column.physical_type == "FIXED_LEN_BYTE_ARRAY":
        return max(int(column.length or 0), 0) + 8
    return _PARQUET_WIDTHS.get(column.physical_type, 8)


def _is_text(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_binary(kind)
    )


def _dictionary_text(column: pa.ChunkedArray, name: str, limits: DecodeLimits) -> int:
    """The bytes a dictionary-encoded text column holds once decoded; checks its longest cell."""
    total = 0
    offset = 0
    for chunk in column.chunks:
        lengths = pc.take(pc.binary_length(chunk.dictionary), chunk.indices)
        longest = pc.max(lengths).as_py() or 0
        if longest > limits.max_cell_bytes:
            row = offset + int(pc.index(lengths, longest).as_py())
            raise BoundExceeded(
                f"row {row + 1}, column {name[:100]!r}: a cell of {longest} bytes, "
                f"over the limit of {limits.max_cell_bytes}",
                "max_cell_bytes",
            )
        total += pc.sum(lengths).as_py() or 0
        offset += len(chunk)
    return int(total)


def _brief(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


# ---- JSON Lines ------------------------------------------------------------------------------

# A JSON string (skipped whole) or a bracket: enough to measure how deep a line nests.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]++|\\.)*+"|[\[\]{}]')


class _RepeatedKey(Exception):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    record = dict(pairs)
    if len(record) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _RepeatedKey(key)
            seen.add(key)
    return record


def _depth_over(line: str, limit: int) -> int | None:
    """The nesting depth of `line` once it passes `limit`, else None (strings are skipped)."""
    if line.count("[") + line.count("{") <= limit:
        return None
    depth = 0
    for token in _JSON_TOKEN.finditer(line):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > limit:
                return depth
        elif char in "]}":
            depth -= 1
    return None


def _read_jsonl(stream: BinaryIO, limits: DecodeLimits) -> pd.DataFrame:
    _check_utf8(stream, "JSON Lines file")
    stream.seek(0)
    text = io.TextIOWrapper(stream, encoding="utf-8-sig")
    try:
        return _jsonl_records(text, limits)
    finally:
        text.detach()  # the caller's file stays open


def _jsonl_records(text: io.TextIOWrapper, limits: DecodeLimits) -> pd.DataFrame:
    parts = list(_jsonl_chunks(text, limits, _JSONL_CHUNK_RECORDS))
    return _concat(parts)


def _jsonl_chunks(
    text: io.TextIOWrapper, limits: DecodeLimits, chunk_records: int
) -> Iterator[pd.DataFrame]:
    """Frames of at most `chunk_records` records (fewer when their cells add up); at least
    one, empty for a file of blank lines."""
    tally = _Tally(limits)
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    count = cells = 0
    made = False
    for number, line in enumerate(text, start=1):
        if not line.strip():
            continue
        record = _jsonl_record(line, number, limits)
        count += 1
        if count > limits.max_dataset_rows:
            raise BoundExceeded(
                f"at least {count} rows, over the limit of {limits.max_dataset_rows}",
                "max_dataset_rows",
            )
        if not columns.keys() >= record.keys():
            for key in record:
                if key not in columns:
                    _new_column(key, number, len(columns) + 1, limits)
                    columns[key] = None
        records.append(record)
        cells += len(record)
        if len(records) >= chunk_records or cells >= _JSONL_CHUNK_CELLS:
            yield _jsonl_chunk(records, tally)
            made = True
            cells = 0
    if records or not made:
        yield _jsonl_chunk(records, tally)


def _jsonl_record(line: str, number: int, limits: DecodeLimits) -> dict[str, Any]:
    deep = _depth_over(line, limits.max_depth)
    if deep is not None:
        raise DataError(
            f"malformed JSON Lines: line {number} nests arrays or objects at least {deep} deep, "
            f"deeper than the limit of {limits.max_depth}"
        )
    try:
        record = json.loads(line)
        # Each key of each object is followed by one colon outside strings: when the line has
        # no more colons than the record has keys, no object can repeat a key.
        if isinstance(record, dict) and line.count(":") != len(record):
            record = json.loads(line, object_pairs_hook=_unique_pairs)
    except _RepeatedKey as exc:
        raise DataError(
            f"malformed JSON Lines: line {number} repeats the key {exc.key[:100]!r} in one "
            "object; every key may appear once"
        ) from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"malformed JSON Lines: line {number}, column {exc.colno}: {exc.msg}"
        ) from exc
    except (ValueError, RecursionError) as exc:  # e.g. an integer of more than 4300 digits
        raise DataError(f"malformed JSON Lines: line {number}: {_brief(exc)}") from exc
    if not isinstance(record, dict):
        raise DataError(
            f"malformed JSON Lines: line {number} is a {type(record).__name__}; "
            "expected one JSON object per line"
        )
    return record


def _new_column(key: str, number: int, count: int, limits: DecodeLimits) -> None:
    if count > limits.max_dataset_columns:
        raise BoundExceeded(
            f"at least {count} columns (keys) by line {number}, "
            f"over the limit of {limits.max_dataset_columns}",
            "max_dataset_columns",
        )
    size = _utf8_size(key)
    if size > limits.max_cell_bytes:
        raise BoundExceeded(
            f"line {number}: a key of {size} bytes ({key[:20]!r}...), "
            f"over the limit of {limits.max_cell_bytes}",
            "max_cell_bytes",
        )


def _jsonl_chunk(records: list[dict[str, Any]], tally: _Tally) -> pd.DataFrame:
    chunk = pd.DataFrame.from_records(records)
    records.clear()
    tally.add(chunk)
    return chunk


def column_dtype(series: pd.Series) -> str:
    """A short, stable dtype name for the API (int64, float64, bool, string, category...)."""
    dtype = series.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        return "category"
    if pd.api.types.is_bool_dtype(dtype):
        return "bool"
    if pd.api.types.is_integer_dtype(dtype):
        return "int64"
    if pd.api.types.is_float_dtype(dtype):
        return "float64"
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return "datetime"
    return "string"


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _sklearn_loader(name: str) -> Callable[..., Any]:
    from sklearn import datasets

    loaders: dict[str, Callable[..., Any]] = {
        "iris": datasets.load_iris,
        "wine": datasets.load_wine,
        "breast_cancer": datasets.load_breast_cancer,
        "digits": datasets.load_digits,
        "diabetes": datasets.load_diabetes,
    }
    return loaders[name]


BUILTIN_DATASETS = ("iris", "wine", "breast_cancer", "digits", "diabetes")


def load_builtin(
    name: str, start: int | None = None, stop: int | None = None, shuffle_seed: int | None = None
) -> pd.DataFrame:
    """A scikit-learn dataset as a frame whose `target` column holds the class names.

    Classifiers get a categorical target that declares every class, so a row range
    that happens to hold fewer classes still knows the full label space.
    """
    bunch = _sklearn_loader(name)(as_frame=True)
    frame: pd.DataFrame = bunch.frame.copy()
    target_names = getattr(bunch, "target_names", None)
    if name != "diabetes" and target_names is not None:
        labels = [_plain(v) for v in target_names]
        codes = frame["target"].to_numpy().astype(int)
        frame["target"] = pd.Categorical.from_codes(codes, categories=pd.Index(labels))
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(frame))
        frame = frame.iloc[order]
    total = len(frame)
    first = 0 if start is None else start
    last = total if stop is None else stop
    if first >= total or last > total:
        raise DataError(
            f"row range [{first}, {last}) is outside {name}, which has {total} rows",
            code="invalid_range",
        )
    return frame.iloc[first:last].reset_index(drop=True)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
