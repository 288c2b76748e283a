"""Large numeric bodies straight to a matrix, without a Python object per value.

`{"instances": [[5.1, 3.5, 1.4, 0.2], ...]}` with thousands of rows is the bulk form of the
predict body. Parsed the general way, each value becomes a Python float inside a Python
list, and NumPy then walks them all twice to find the dtype and shape: for 10,000 rows of 4
numbers that is most of the request's time, more than the forward pass. simdjson validates
the whole document and copies the numbers into one buffer in C; the row structure, which
that copy flattens, is then checked on the body's brackets and commas.

This only ever takes bodies it can vouch for. Anything else (records, strings, booleans,
nulls, ragged or nested rows, integers beyond 64 bits, invalid JSON) gives None and goes to
the general parser, whose errors name the problem.
"""

import re
import threading

import numpy as np
import simdjson

# Below this many bytes orjson and one NumPy call are as fast, so the general parser keeps
# small bodies (most requests) and this path costs them nothing.
MIN_BODY_BYTES = 4 * 1024

# A parser keeps its buffers (about 4 bytes per byte of document) between documents, which
# spares each request megabytes of allocation. Bodies above this size get a parser of their
# own, so that one huge body is not held for good.
REUSED_PARSER_MAX_BYTES = 1024 * 1024
_parsers = threading.local()

# A cheap look at the start spares bodies of records a parse that would be thrown away.
_INSTANCES_FIRST = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"instances"[ \t\n\r]*:')
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b"[],")

# Bodies over this size are read a piece of rows at a time, each piece about this many
# bytes: simdjson holds the GIL while it parses, 70 ms for 16 MiB on a slow core, and a body
# parsed on a worker thread must still let the event loop run every few milliseconds.
PIECE_BYTES = 512 * 1024
_ARRAY_START = re.compile(rb"[ \t\n\r]*\[")
_ARRAY_END = re.compile(rb"\][ \t\n\r]*\}[ \t\n\r]*\Z")
_ROW_BOUNDARY = re.compile(rb"\][ \t\n\r]*,[ \t\n\r]*\[")


class TooManyRows(Exception):
    """The body holds more rows than the caller allows (counted before they are copied)."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(f"{rows} rows, over the limit of {limit}")
        self.rows = rows
        self.limit = limit


def dense_instances(body: bytes, max_rows: int | None = None) -> np.ndarray | None:
    """The rows of a body that is exactly `{"instances": [[numbers], ...]}`, as a float64
    (rows, width) matrix with every row the same width; None for any other body.

    Raises TooManyRows for such a body of more than `max_rows` rows, once the document is
    parsed and before its numbers are copied out.
    """
    if len(body) < MIN_BODY_BYTES:
        return None
    first = _INSTANCES_FIRST.match(body)
    if first is None:
        return None
    if len(body) > PIECE_BYTES:
        return _in_pieces(body, first.end(), max_rows)
    try:
        document = _parser(len(body)).parse(body)
        if not isinstance(document, simdjson.Object) or len(document) != 1:
            return None
        instances = document["instances"]
        if not isinstance(instances, simdjson.Array):
            return None
        rows = len(instances)
        too_many = max_rows is not None and rows > max_rows
        # Raises TypeError for a string, boolean, null or object anywhere in the array, and
        # flattens nested arrays of any depth (the structure is checked below).
        buffer = None if too_many else instances.as_buffer(of_type="d")
    except (ValueError, TypeError, RuntimeError, KeyError):
        # Invalid JSON, a number out of range, a value of another type, an integer beyond
        # 64 bits: the general parser says which.
        return None
    finally:
        # The document's proxies pin the (reused) parser: let go of them before raising.
        document = instances = None
    if too_many:
        assert max_rows is not None
        raise TooManyRows(rows, max_rows)
    assert buffer is not None
    values = np.frombuffer(buffer, dtype=np.float64)
    if rows == 0 or len(values) == 0 or len(values) % rows:
        return None
    width = len(values) // rows
    if not _rectangular(body, rows, width):
        return None
    return values.reshape(rows, width)


def _in_pieces(body: bytes, start: int, max_rows: int | None) -> np.ndarray | None:
    """dense_instances for a large body, its rows parsed PIECE_BYTES at a time.

    The array of rows is cut where one row ends and the next begins (`],[`), each piece
    is read as a document of its own, `[row, ...]`, with the checks of a whole body, and
    the pieces' values are joined. A body whose pieces all pass is exactly a valid body of
    numeric rows of one width (valid pieces joined by commas make a valid array); any
    other body fails a piece, wherever it was cut, and goes to the general parser.
    """
    opening = _ARRAY_START.match(body, start)
    closing = _ARRAY_END.search(body, max(start, len(body) - 4096))
    if opening is None or closing is None or closing.start() < opening.end():
        return None
    end = closing.start()
    pieces: list[np.ndarray] = []
    rows = 0
    width: int | None = None
    position = opening.end()
    while position < end:
        boundary = _ROW_BOUNDARY.search(body, min(position + PIECE_BYTES, end), end)
        stop = end if boundary is None else boundary.start() + 1
        piece = b"[" + body[position:stop] + b"]"
        over = max_rows is not None and rows > max_rows
        read = _rows_of(piece, count_only=over)
        if read is None:
            return None
        count, values = read
        rows += count
        if values is not None and not (max_rows is not None and rows > max_rows):
            if count == 0 or len(values) == 0 or len(values) % count:
                return None
            if width is None:
                width = len(values) // count
            if len(values) != count * width or not _rectangular(piece, count, width):
                return None
            pieces.append(values)
        if boundary is None:
            break
        position = boundary.end() - 1  # the next row's `[`
    if max_rows is not None and rows > max_rows:
        raise TooManyRows(rows, max_rows)
    if not pieces or width is None:
        return None
    return np.concatenate(pieces).reshape(rows, width)


def _rows_of(piece: bytes, *, count_only: bool) -> tuple[int, np.ndarray | None] | None:
    """The rows in `[row, ...]` and their values flattened (None with `count_only`)."""
    document = None
    try:
        document = _parser(len(piece)).parse(piece)
        if not isinstance(document, simdjson.Array):
            return None
        count = len(document)
        buffer = None if count_only else document.as_buffer(of_type="d")
    except (ValueError, TypeError, RuntimeError, KeyError):
        return None
    finally:
        document = None  # let go of the parser
    return count, None if buffer is None else np.frombuffer(buffer, dtype=np.float64)


def _parser(size: int) -> simdjson.Parser:
    if size > REUSED_PARSER_MAX_BYTES:
        return simdjson.Parser()
    parser: simdjson.Parser | None = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    return parser


def _rectangular(body: bytes, rows: int, width: int) -> bool:
    """Whether a body whose only array holds only numbers holds `rows` rows of `width`.

    The body is valid JSON with one key and numbers for leaves, so its brackets and commas
    (neither the key nor a number has any) spell out the array's structure exactly: it is
    `rows` rows of `width` numbers when they read `[[,,,],[,,,],...]`, with `width - 1`
    commas in each row. (An empty row reads like a one-number row; the count of numbers,
    `rows * width`, rules that out.)
    """
    row = b"[" + b"," * (width - 1) + b"]"
    expected = b"[" + (row + b",") * (rows - 1) + row + b"]"
    return body.translate(None, _NOT_STRUCTURE) == expected
