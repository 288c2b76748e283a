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


def dense_instances(body: bytes) -> np.ndarray | None:
    """The rows of a body that is exactly `{"instances": [[numbers], ...]}`, as a float64
    (rows, width) matrix with every row the same width; None for any other body."""
    if len(body) < MIN_BODY_BYTES:
        return None
    if _INSTANCES_FIRST.match(body) is None:
        return None
    try:
        document = _parser(len(body)).parse(body)
        if not isinstance(document, simdjson.Object) or len(document) != 1:
            return None
        instances = document["instances"]
        if not isinstance(instances, simdjson.Array):
            return None
        rows = len(instances)
        # Raises TypeError for a string, boolean, null or object anywhere in the array, and
        # flattens nested arrays of any depth (the structure is checked below).
        values = np.frombuffer(instances.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, RuntimeError, KeyError):
        # Invalid JSON, a number out of range, a value of another type, an integer beyond
        # 64 bits: the general parser says which.
        return None
    if rows == 0 or len(values) == 0 or len(values) % rows:
        return None
    width = len(values) // rows
    if not _rectangular(body, rows, width):
        return None
    return values.reshape(rows, width)


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
