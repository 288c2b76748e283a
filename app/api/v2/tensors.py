"""Tensors of the Open Inference Protocol in and out: JSON data and the binary extension.

An infer body is a JSON header, optionally followed by raw tensor bytes; the header's length
then travels in `Inference-Header-Content-Length`. Binary tensors are little-endian and
row-major; a BYTES tensor is each element's 4-byte little-endian length, then its bytes.

One wire format (JSON and binary tensors, both directions) in one module: its rules
are the protocol's and change together.
"""

import json
import struct
from dataclasses import dataclass
from typing import Any, Literal, cast

import numpy as np
import simdjson
from pydantic import ValidationError

from app.api.v2.errors import V2Error
from app.schemas.predictions import nested_too_deeply, too_many_rows
from app.schemas.v2 import InferenceRequest, RequestInput

NUMERIC_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
# numpy kinds that JSON data may hold for each family of datatypes: integers may widen to
# floats, but never the other way, and booleans stay booleans.
_JSON_KINDS = {"BOOL": "b", "INT": "iu", "UINT": "iu", "FP": "iuf"}
_LENGTH = struct.Struct("<I")

# No model takes more than 4 dimensions (N, C, H, W); NumPy stops at 64. Shapes are checked,
# with Python's integers, before anything is allocated or reshaped.
MAX_RANK = 16
INT64_MAX = 2**63 - 1
# JSON headers over this size are parsed by simdjson and their numeric data copied out in C
# (see _from_document), not turned into a Python object per value: Python's parser holds
# the GIL for the whole document, half a second for 16 MiB, and nothing else runs meanwhile.
LARGE_HEADER_BYTES = 256 * 1024
_AS_BUFFER: dict[str, tuple[Literal["d", "i", "u"], type[np.generic]]] = {
    "FP": ("d", np.float64),
    "INT": ("i", np.int64),
    "UINT": ("u", np.uint64),
}
_NOT_STRUCTURE = bytes(byte for byte in range(256) if byte not in b"[],")


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    # numeric: an ndarray of the datatype; BYTES: an object ndarray of bytes or str
    values: np.ndarray


@dataclass
class DecodedRequest:
    header: InferenceRequest
    inputs: list[Tensor]


def decode_request(
    body: bytes, header_length: int | None, max_rows: int | None = None
) -> DecodedRequest:
    """The JSON header and every input tensor of an infer body.

    V2Error 400 for a body that does not decode, 413 for a tensor whose batch dimension
    (the first of its shape) is over `max_rows`, checked before its data is read.
    """
    if header_length is None:
        header_bytes, binary = body, b""
    else:
        if not 0 < header_length <= len(body):
            raise V2Error(
                400,
                f"Inference-Header-Content-Length is {header_length} but the body holds "
                f"{len(body)} bytes",
            )
        header_bytes, binary = body[:header_length], body[header_length:]
    document = _parse_header(header_bytes)
    try:
        header = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        raise V2Error(400, f"the request is not a valid inference request: {_errors(exc)}") from exc
    for spec in header.inputs:
        _element_count(spec)
        if max_rows is not None and spec.shape and spec.shape[0] > max_rows:
            raise V2Error(
                413, f"input {spec.name!r}: {too_many_rows(spec.shape[0], max_rows).detail}"
            )
    offset = 0
    tensors = []
    seen: set[str] = set()
    for spec in header.inputs:
        if spec.name in seen:
            raise V2Error(400, f"input {spec.name!r} appears more than once")
        seen.add(spec.name)
        size = (spec.parameters or {}).get("binary_data_size")
        if size is None:
            tensors.append(_from_json(spec))
            continue
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise V2Error(400, f"input {spec.name!r}: binary_data_size must be an integer >= 0")
        if spec.data is not None:
            raise V2Error(400, f"input {spec.name!r} has both data and binary_data_size")
        if offset + size > len(binary):
            raise V2Error(
                400,
                f"input {spec.name!r} declares {size} bytes of binary data but only "
                f"{len(binary) - offset} remain after the JSON header",
            )
        tensors.append(_from_binary(spec, binary[offset : offset + size]))
        offset += size
    if offset != len(binary):
        raise V2Error(
            400,
            f"the body holds {len(binary) - offset} bytes of binary data that no input "
            "declares (parameters.binary_data_size)",
        )
    return DecodedRequest(header=header, inputs=tensors)


def _parse_header(header: bytes) -> Any:
    """The JSON header as Python objects; in a large header, each input's `data` array
    stays a simdjson.Array (read by _from_document)."""
    if len(header) > LARGE_HEADER_BYTES:
        try:
            parsed = simdjson.Parser().parse(header)
        except (ValueError, RuntimeError):
            pass  # invalid JSON, NaN, a number beyond 64 bits: Python's parser says what
        else:
            header = _header_objects(parsed)
            if header is not None:
                return header
    try:
        return json.loads(header)
    except RecursionError as exc:
        raise V2Error(400, nested_too_deeply().detail) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise V2Error(400, f"the request is not valid JSON: {exc}") from exc


def _header_objects(document: Any) -> Any:
    """None for a document whose objects repeat a key (Python's parser keeps the last)."""
    if isinstance(document, simdjson.Array):
        return []  # not an object: refused as such, whatever it holds
    if not isinstance(document, simdjson.Object):
        return document
    keys = list(document)
    if len(set(keys)) != len(keys):
        return None
    header: dict[str, Any] = {}
    for key in keys:
        value = document[key]
        if key == "inputs" and isinstance(value, simdjson.Array):
            inputs = [_input_objects(item) for item in value]
            if any(item is None for item in inputs):
                return None
            header[key] = inputs
        else:
            header[key] = _python(value)
    return header


def _input_objects(item: Any) -> Any:
    if not isinstance(item, simdjson.Object):
        return _python(item)
    keys = list(item)
    if len(set(keys)) != len(keys):
        return None
    spec: dict[str, Any] = {}
    for key in keys:
        value = item[key]
        keep = key == "data" and isinstance(value, simdjson.Array)
        spec[key] = value if keep else _python(value)
    return spec


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def _element_count(spec: RequestInput) -> int:
    """The number of elements `spec.shape` declares; V2Error 400 for an absurd shape."""
    shape = spec.shape
    if len(shape) > MAX_RANK:
        raise V2Error(
            400,
            f"input {spec.name!r} has a shape of {len(shape)} dimensions; at most {MAX_RANK} "
            "are accepted",
        )
    count = 1
    nonzero = 1
    for dim in shape:  # each >= 0 (the request schema)
        if dim > INT64_MAX:
            raise V2Error(
                400,
                f"input {spec.name!r} has shape {shape}: dimension {dim} is over the int64 "
                f"maximum {INT64_MAX}",
            )
        count *= dim
        nonzero *= max(dim, 1)
    if nonzero > INT64_MAX:
        raise V2Error(
            400,
            f"input {spec.name!r} has shape {shape}, {nonzero} elements, which overflows "
            f"int64 (at most {INT64_MAX})",
        )
    return count


def _errors(exc: ValidationError) -> str:
    shown = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        shown.append(f"{location}: {error['msg']}")
    return "; ".join(shown)


def _from_json(spec: RequestInput) -> Tensor:
    if spec.data is None:
        raise V2Error(400, f"input {spec.name!r} has no data (nor parameters.binary_data_size)")
    count = _element_count(spec)
    if isinstance(spec.data, simdjson.Array):
        values = _from_document(spec, spec.data)
        if values is not None:
            return _shaped(spec, values, count)
        spec.data = [_python(item) for item in spec.data]  # the checks below say what is wrong
    if not isinstance(spec.data, list):
        raise V2Error(400, f"input {spec.name!r}: data must be a list of values")
    if spec.datatype == "BYTES":
        flat = _flatten(spec.data)
        for value in flat:
            if not isinstance(value, str):
                raise V2Error(400, f"input {spec.name!r} is BYTES: expected strings, got {value!r}")
        values = np.empty(len(flat), dtype=object)
        values[:] = flat
    else:
        try:
            values = np.asarray(spec.data)
        except ValueError as exc:  # ragged nesting
            raise V2Error(
                400, f"input {spec.name!r}: data is not a regular (rectangular) array"
            ) from exc
        family = spec.datatype.rstrip("0123456789")
        allowed = _JSON_KINDS[family]
        if values.size and values.dtype.kind not in allowed:
            expected = {"BOOL": "true or false", "FP": "numbers"}.get(family, "integers")
            raise V2Error(
                400,
                f"input {spec.name!r} is {spec.datatype}: expected {expected}, got "
                f"{_first_mismatch(values, allowed)!r}",
            )
        dtype = NUMERIC_DTYPES[spec.datatype]
        if values.size and dtype.kind in "iu" and not _fits(values, dtype):
            raise V2Error(400, f"input {spec.name!r}: a value is out of range for {spec.datatype}")
        values = values.astype(dtype).reshape(-1)
    return _shaped(spec, values, count)


def _shaped(spec: RequestInput, values: np.ndarray, count: int) -> Tensor:
    if values.size != count:
        raise V2Error(
            400,
            f"input {spec.name!r} has shape {spec.shape} ({count} values) but its data holds "
            f"{values.size}",
        )
    return Tensor(spec.name, spec.datatype, tuple(spec.shape), values.reshape(spec.shape))


def _from_document(spec: RequestInput, data: simdjson.Array) -> np.ndarray | None:
    """The flat values of a numeric input's data in a large header, copied out by simdjson.

    None when the data needs a closer look (booleans, a value of another type, a number
    that does not fit 64 bits): the Python path then decodes it with its own errors. Data
    nested irregularly is refused here as there.
    """
    family = spec.datatype.rstrip("0123456789")
    if family not in _AS_BUFFER:
        return None
    kind, read = _AS_BUFFER[family]
    try:
        values = np.frombuffer(data.as_buffer(of_type=kind), dtype=read)
    except (ValueError, TypeError):
        return None
    minified = cast(bytes, data.mini)  # bytes, whatever the stubs say
    if not _regular(minified.translate(None, _NOT_STRUCTURE)):
        raise V2Error(400, f"input {spec.name!r}: data is not a regular (rectangular) array")
    dtype = NUMERIC_DTYPES[spec.datatype]
    if values.size and dtype.kind in "iu" and not _fits(values, dtype):
        raise V2Error(400, f"input {spec.name!r}: a value is out of range for {spec.datatype}")
    return values.astype(dtype)


def _regular(structure: bytes) -> bool:
    """Whether the brackets and commas of a nested array of numbers spell a regular array.

    The dimensions are read off the first element at each level, then the structure such
    an array would have is built and compared (as app/serving/dense.py checks rows).
    """
    depth = len(structure) - len(structure.lstrip(b"["))
    dims = []
    segment = structure
    for level in range(depth - 1):
        closing = b"]" * (depth - level - 1)
        end = segment.find(closing, 1)
        if end < 0:
            return False
        child = segment[1 : end + len(closing)]
        dims.append((len(segment) - 1) // (len(child) + 1))
        segment = child
    dims.append(0 if segment == b"[]" else segment.count(b",") + 1)
    expected = b"[" + b"," * (dims[-1] - 1) + b"]" if dims[-1] else b"[]"
    for size in reversed(dims[:-1]):
        expected = b"[" + b",".join([expected] * size) + b"]"
    return expected == structure


def _fits(values: np.ndarray, dtype: np.dtype[Any]) -> bool:
    # astype would wrap an out-of-range integer around silently.
    limits = np.iinfo(dtype)
    return bool(int(values.min()) >= limits.min and int(values.max()) <= limits.max)


def _flatten(data: list[Any]) -> list[Any]:
    flat: list[Any] = []
    stack: list[Any] = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def _first_mismatch(values: np.ndarray, allowed: str) -> Any:
    for value in values.reshape(-1).tolist():
        if isinstance(value, bool):
            if "b" not in allowed:
                return value
        elif isinstance(value, int):
            if "i" not in allowed:
                return value
        elif isinstance(value, float):
            if "f" not in allowed:
                return value
        else:
            return value
    return values.reshape(-1)[0]


def _from_binary(spec: RequestInput, chunk: bytes) -> Tensor:
    count = _element_count(spec)
    if spec.datatype == "BYTES":
        items = _split_bytes(chunk, spec.name)
        if len(items) != count:
            raise V2Error(
                400,
                f"input {spec.name!r} has shape {spec.shape} ({count} values) but its binary "
                f"data holds {len(items)} strings",
            )
        values = np.empty(len(items), dtype=object)
        values[:] = items
    else:
        dtype = NUMERIC_DTYPES[spec.datatype]
        if len(chunk) != count * dtype.itemsize:
            raise V2Error(
                400,
                f"input {spec.name!r} has shape {spec.shape}: {spec.datatype} needs "
                f"{count * dtype.itemsize} bytes, got {len(chunk)}",
            )
        values = np.frombuffer(chunk, dtype=dtype)
    return Tensor(spec.name, spec.datatype, tuple(spec.shape), values.reshape(spec.shape))


def _split_bytes(chunk: bytes, name: str) -> list[bytes]:
    items = []
    offset = 0
    end = len(chunk)
    while offset < end:
        if offset + 4 > end:
            raise V2Error(400, f"input {name!r}: BYTES data ends inside a length prefix")
        (length,) = _LENGTH.unpack_from(chunk, offset)
        offset += 4
        if offset + length > end:
            raise V2Error(
                400, f"input {name!r}: a BYTES element of {length} bytes runs past the data"
            )
        items.append(chunk[offset : offset + length])
        offset += length
    return items


@dataclass
class OutputTensor:
    name: str
    datatype: str
    values: np.ndarray  # numeric of the datatype, or an object array of str for BYTES


def encode_response(
    header: dict[str, Any], outputs: list[OutputTensor], binary: set[str], *, steps: bool = False
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it.

    `steps=True` (large responses, built off the event loop) writes each output's JSON
    data a step of values at a time, the same bytes without holding the GIL throughout.
    """
    described = []
    chunks = []
    for output in outputs:
        entry: dict[str, Any] = {
            "name": output.name,
            "datatype": output.datatype,
            "shape": list(output.values.shape),
        }
        if output.name in binary:
            raw = _to_bytes(output)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        elif not steps:
            entry["data"] = output.values.reshape(-1).tolist()
        described.append(entry)
    if steps:
        document = _document_in_steps(header, described, outputs, binary).encode()
    else:
        document = json.dumps({**header, "outputs": described}, separators=_SEPARATORS).encode()
    if not chunks:
        return document, None
    return b"".join([document, *chunks]), len(document)


_SEPARATORS = (",", ":")
_STEP_VALUES = 32_768


def _document_in_steps(
    header: dict[str, Any],
    described: list[dict[str, Any]],
    outputs: list[OutputTensor],
    binary: set[str],
) -> str:
    """json.dumps({**header, "outputs": [...]}) with each entry's data written in steps."""
    opening = json.dumps({**header, "outputs": []}, separators=_SEPARATORS)
    assert opening.endswith("[]}")
    parts = [opening[: -len("[]}")], "["]
    for index, (entry, output) in enumerate(zip(described, outputs, strict=True)):
        if index:
            parts.append(",")
        text = json.dumps(entry, separators=_SEPARATORS)
        if output.name in binary:
            parts.append(text)
            continue
        flat = output.values.reshape(-1)
        pieces = [
            json.dumps(flat[start : start + _STEP_VALUES].tolist(), separators=_SEPARATORS)[1:-1]
            for start in range(0, len(flat), _STEP_VALUES)
        ]
        parts += [text[:-1], ',"data":[', ",".join(pieces), "]}"]
    parts.append("]}")
    return "".join(parts)


def _to_bytes(output: OutputTensor) -> bytes:
    if output.datatype != "BYTES":
        return output.values.astype(NUMERIC_DTYPES[output.datatype], copy=False).tobytes()
    parts = []
    for value in output.values.reshape(-1).tolist():
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)
