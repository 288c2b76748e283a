"""Prediction request and response: pydantic models for the OpenAPI document, and the
hand-written parser the hot path uses instead of validating the body with them."""

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import Field, model_validator

from app.errors import AppError, Invalid, TooLarge
from app.schemas.common import RequestSchema, Schema
from app.schemas.models import ModelRef

Scalar = float | int | str | bool | None


_EXAMPLES = [
    {"instances": [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]},
    {
        "records": [
            {
                "sepal length (cm)": 5.1,
                "sepal width (cm)": 3.5,
                "petal length (cm)": 1.4,
                "petal width (cm)": 0.2,
            }
        ]
    },
]


def _one_form_of_rows(schema: dict[str, Any]) -> None:
    """Exactly one of `instances` and `records`, a list, as the route checks it.

    Stated with min/maxProperties rather than a oneOf of two object schemas, which
    generated clients (openapi-python-client) cannot type and skip the operation for.
    """
    for name in _FIELDS:
        field = schema["properties"][name]
        options = [o for o in field.pop("anyOf", []) if o.get("type") != "null"]
        field.update(options[0] if options else {})
        field.pop("default", None)
        field["minItems"] = 1
    schema["minProperties"] = 1
    schema["maxProperties"] = 1
    schema["examples"] = _EXAMPLES


class PredictRequest(RequestSchema):
    # Values are checked against the version's signature, which knows whether a row is a list
    # of numbers and categories or an image (nested lists), so that errors can name the place.
    instances: list[list[Any]] | None = Field(
        None,
        description="Rows of values in the version's signature order; for an image model, one "
        "image per instance as CxHxW (or HxW for one channel) nested lists, or C·H·W numbers.",
    )
    records: list[dict[str, Any]] | None = Field(
        None,
        description='Rows as objects keyed by input column name; for images {"image": ...}.',
    )

    model_config = {"json_schema_extra": lambda schema: _one_form_of_rows(schema)}

    @model_validator(mode="after")
    def _exactly_one_form(self) -> "PredictRequest":
        if (self.instances is None) == (self.records is None):
            raise ValueError("give exactly one of 'instances' or 'records'")
        rows = self.instances if self.instances is not None else self.records
        if not rows:
            raise ValueError("no rows: expected at least one instance or record")
        return self


class PredictResponse(Schema):
    model: ModelRef
    predictions: list[Any]
    classes: list[Any] | None = Field(None, description="Classification only.")
    probabilities: list[list[float]] | None = Field(
        None, description="Classification only: one row per instance, columns in `classes` order."
    )


@dataclass(frozen=True)
class PredictBody:
    instances: list[Any] | None
    records: list[Any] | None

    @property
    def rows(self) -> int:
        return len(self.instances if self.instances is not None else self.records or [])


_FIELDS = ("instances", "records")

# Deeper than this, Python's own parser gives up (RecursionError) and orjson refuses
# (above 1,024): both are answered as a 400, whichever parser got the body.
MAX_JSON_DEPTH = 1000


def nested_too_deeply() -> AppError:
    """400 malformed_body for a JSON document nested deeper than the parsers take."""
    return AppError(
        "malformed_body",
        f"the JSON is nested too deeply: this server parses at most about {MAX_JSON_DEPTH} "
        "levels of arrays and objects, and no request of this API needs more than a few",
    )


def too_many_rows(rows: int, limit: int) -> TooLarge:
    """413 too_many_rows: `rows` rows where one request may hold `limit`."""
    return TooLarge(
        "too_many_rows",
        f"the request holds {rows} rows, over the limit of {limit} rows per request "
        "(GRAFT_MAX_PREDICT_ROWS); send them in several requests",
    )


def parse_predict_body(body: bytes, max_rows: int | None = None) -> PredictBody:
    """Parse and check the shape of a predict body, as PredictRequest would but cheaper.

    Values are checked later, against the version's signature. Raises Invalid with the
    `validation_error` code and FastAPI-style `errors` entries, TooLarge (too_many_rows)
    for more than `max_rows` rows, and AppError (malformed_body) for JSON nested too deeply.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        data = _lenient_json(body)
    checked = _checked_body(data)
    if max_rows is not None and checked.rows > max_rows:
        raise too_many_rows(checked.rows, max_rows)
    return checked


def _checked_body(data: Any) -> PredictBody:
    if not isinstance(data, dict):
        raise _invalid(["body"], "expected a JSON object with 'instances' or 'records'")
    unknown = [key for key in data if key not in _FIELDS]
    if unknown:
        raise _invalid(["body", unknown[0]], "unknown field; expected 'instances' or 'records'")
    for key in _FIELDS:
        if key in data and data[key] is None:
            raise _invalid(["body", key], "is null; expected a list of rows (or leave it out)")
    instances, records = data.get("instances"), data.get("records")
    if (instances is None) == (records is None):
        raise _invalid(["body"], "give exactly one of 'instances' or 'records'")
    field = "instances" if instances is not None else "records"
    rows = data[field]
    if not isinstance(rows, list):
        raise _invalid(["body", field], f"expected a list of rows, got {type(rows).__name__}")
    if not rows:
        raise _invalid(["body", field], "no rows: expected at least one instance or record")
    return PredictBody(instances=instances, records=records)


def _lenient_json(body: bytes) -> Any:
    # orjson refuses NaN, Infinity and numbers beyond float range. Python's parser reads them,
    # so that the signature check can say which instance and feature holds the bad value.
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise _invalid(["body", exc.pos], f"invalid JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise nested_too_deeply() from exc
    except ValueError as exc:  # not UTF-8
        raise _invalid(["body"], f"invalid JSON: {exc}") from exc


def parse_large_predict_body(body: bytes, max_rows: int | None = None) -> PredictBody:
    """parse_predict_body for large bodies, in steps that each hold the GIL briefly.

    orjson (or Python's parser) turns a whole body into objects in one C call that holds
    the GIL: for 16 MiB, half a second during which no other thread, the event loop
    included, runs. This reads the body's top-level object and its `instances` or `records`
    array in Python and each row with Python's C scanner, so a thread running it lets the
    loop in between rows (the interpreter's switch interval, 5 ms). The values, the
    answers and the errors are those of parse_predict_body (Python's parser is the one it
    falls back on), except that a body whose top level is not an object gets the shape
    error without its JSON being checked first. Rows are counted as they are read, and
    those beyond `max_rows` are checked but not kept.
    """
    try:
        text = body.decode(json.detect_encoding(body), "surrogatepass")
    except UnicodeDecodeError as exc:
        raise _invalid(["body"], f"invalid JSON: {exc}") from exc
    try:
        data = _RowWise(text, max_rows).document()
    except json.JSONDecodeError as exc:
        raise _invalid(["body", exc.pos], f"invalid JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise nested_too_deeply() from exc
    return _checked_body(data)


_decoder = json.JSONDecoder()
# The C string scanner json's own object parser uses (not in the typeshed stubs).
_scanstring: Callable[[str, int], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SPACE = " \t\n\r"


class _RowWise:
    """A JSON document read an object member, and an array element, at a time.

    The errors are those Python's parser raises at the same place (same message and
    position): values are read by its own scanner, and the structure between them is
    checked the way it checks it.
    """

    def __init__(self, text: str, max_rows: int | None) -> None:
        self.text = text
        self.end = len(text)
        self.max_rows = max_rows
        self._scan: Callable[[str, int], tuple[Any, int]] = _decoder.scan_once  # type: ignore[attr-defined]

    def document(self) -> Any:
        text = self.text
        pos = self._skip(0)
        if pos == self.end:
            raise json.JSONDecodeError("Expecting value", text, pos)
        if text[pos] != "{":
            # Not an object, so not a predict body: spare a huge array its parse.
            raise _invalid(["body"], "expected a JSON object with 'instances' or 'records'")
        data, pos = self._object(pos + 1)
        pos = self._skip(pos)
        if pos != self.end:
            raise json.JSONDecodeError("Extra data", text, pos)
        return data

    def _skip(self, pos: int) -> int:
        if pos < self.end and self.text[pos] in _SPACE:
            match = _WHITESPACE.match(self.text, pos)
            assert match is not None
            return match.end()
        return pos

    def _value(self, pos: int) -> tuple[Any, int]:
        try:
            value, end = self._scan(self.text, pos)
        except StopIteration as err:
            raise json.JSONDecodeError("Expecting value", self.text, err.value) from None
        return value, end

    def _object(self, pos: int) -> tuple[dict[str, Any], int]:
        text, end = self.text, self.end
        data: dict[str, Any] = {}
        pos = self._skip(pos)
        if pos < end and text[pos] == "}":
            return data, pos + 1
        while True:
            if pos >= end or text[pos] != '"':
                raise json.JSONDecodeError(
                    "Expecting property name enclosed in double quotes", text, pos
                )
            key, pos = _scanstring(text, pos + 1)
            pos = self._skip(pos)
            if pos >= end or text[pos] != ":":
                raise json.JSONDecodeError("Expecting ':' delimiter", text, pos)
            pos = self._skip(pos + 1)
            if key in _FIELDS and pos < end and text[pos] == "[":
                data[key], pos = self._rows(pos + 1)
            else:
                data[key], pos = self._value(pos)
            pos = self._skip(pos)
            if pos < end and text[pos] == "}":
                return data, pos + 1
            if pos >= end or text[pos] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos = self._skip(pos + 1)

    def _rows(self, pos: int) -> tuple[list[Any], int]:
        text, end, limit = self.text, self.end, self.max_rows
        rows: list[Any] = []
        count = 0
        pos = self._skip(pos)
        if pos < end and text[pos] == "]":
            return rows, pos + 1
        while True:
            value, pos = self._value(pos)
            count += 1
            if limit is None or count <= limit:
                rows.append(value)
            pos = self._skip(pos)
            if pos < end and text[pos] == "]":
                break
            if pos >= end or text[pos] != ",":
                raise json.JSONDecodeError("Expecting ',' delimiter", text, pos)
            pos = self._skip(pos + 1)
        if limit is not None and count > limit:
            raise too_many_rows(count, limit)
        return rows, pos + 1


def _invalid(loc: list[str | int], message: str) -> Invalid:
    where = ".".join(str(part) for part in loc)
    return Invalid(
        "validation_error",
        f"the request is not valid: {where}: {message}",
        errors=[{"loc": loc, "msg": message}],
    )
