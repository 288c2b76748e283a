"""Tensors of the Open Inference Protocol in and out: JSON data and the binary extension.

An infer body is a JSON header, optionally followed by raw tensor bytes; the header's length
then travels in `Inference-Header-Content-Length`. Binary tensors are little-endian and
row-major; a BYTES tensor is each element's 4-byte little-endian length, then its bytes.
"""

import json
import math
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import ValidationError

from app.api.v2.errors import V2Error
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


def decode_request(body: bytes, header_length: int | None) -> DecodedRequest:
    """The JSON header and every input tensor of an infer body."""
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
    try:
        document = json.loads(header_bytes)
    except (ValueError, UnicodeDecodeError) as exc:
        raise V2Error(400, f"the request is not valid JSON: {exc}") from exc
    try:
        header = InferenceRequest.model_validate(document)
    except ValidationError as exc:
        raise V2Error(400, f"the request is not a valid inference request: {_errors(exc)}") from exc
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


def _errors(exc: ValidationError) -> str:
    shown = []
    for error in exc.errors()[:5]:
        location = ".".join(str(part) for part in error["loc"]) or "body"
        shown.append(f"{location}: {error['msg']}")
    return "; ".join(shown)


def _from_json(spec: RequestInput) -> Tensor:
    if spec.data is None:
        raise V2Error(400, f"input {spec.name!r} has no data (nor parameters.binary_data_size)")
    if not isinstance(spec.data, list):
        raise V2Error(400, f"input {spec.name!r}: data must be a list of values")
    count = math.prod(spec.shape)
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
    if values.size != count:
        raise V2Error(
            400,
            f"input {spec.name!r} has shape {spec.shape} ({count} values) but its data holds "
            f"{values.size}",
        )
    return Tensor(spec.name, spec.datatype, tuple(spec.shape), values.reshape(spec.shape))


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
    count = math.prod(spec.shape)
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
    header: dict[str, Any], outputs: list[OutputTensor], binary: set[str]
) -> tuple[bytes, int | None]:
    """The response body, and the JSON header's length when binary tensors follow it."""
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
        else:
            entry["data"] = output.values.reshape(-1).tolist()
        described.append(entry)
    document = json.dumps({**header, "outputs": described}, separators=(",", ":")).encode()
    if not chunks:
        return document, None
    return b"".join([document, *chunks]), len(document)


def _to_bytes(output: OutputTensor) -> bytes:
    if output.datatype != "BYTES":
        return output.values.astype(NUMERIC_DTYPES[output.datatype], copy=False).tobytes()
    parts = []
    for value in output.values.reshape(-1).tolist():
        raw = value.encode() if isinstance(value, str) else bytes(value)
        parts.append(_LENGTH.pack(len(raw)))
        parts.append(raw)
    return b"".join(parts)
