"""The OpenAPI document, completed so that it tells the truth about every operation.

FastAPI documents what a route's signature shows. Much of what a client meets comes from
elsewhere: the Host check, the key check and the body limit are middleware, malformed
bodies and database trouble are caught by the app's handlers, and every error is problem+json
(`application/problem+json`), not FastAPI's `HTTPValidationError` under `application/json`.
`complete_openapi` adds those answers to each operation they can reach, with their real
media types, declares the bearer scheme and each operation's scope, and adds OpenAPI links
from the operations that create resources to the operations that use their ids, so that a
stateful client (schemathesis, a generated SDK's docs) can walk dataset → job → version →
predict.

Which answers an operation can give is decided from facts of the route, not listed by hand:
whether it is public, whether it takes a body, whether it has parameters, whether it speaks
the inference protocol (/v2 answers its own `{"error": ...}` body).
"""

from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI

from app.api.auth import required_scope
from app.api.v2.errors import is_v2_path
from app.services.datasets import UPLOAD_MEDIA_TYPES

PROBLEM_MEDIA_TYPE = "application/problem+json"
_PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
_V2_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# What each status means wherever the service itself (not the route) may answer it.
_WHY = {
    400: "Malformed: a body that is not valid JSON or form data, or a Host header this "
    "server does not answer to (host_not_allowed)",
    401: "No API key, or an unknown, revoked or expired one",
    403: "The key lacks the `{scope}` scope",
    413: "The body is over the request size limit (request_too_large)",
    409: "Conflicts with the current state (another request changed what this one refers "
    "to); nothing was written",
    415: "The body's media type is not one this operation reads",
    422: "Well-formed but not valid: `errors` lists each field that was wrong and why",
    429: "Over the key's request rate (or another limit named in `detail`); see Retry-After",
    500: "The server failed; the error is logged (never for anything a client sent)",
    503: "The database is busy, full or unreachable; nothing was written. Retry after Retry-After",
}


def _operations(schema: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method in _METHODS:
                yield path, method, operation


def _problem(description: str) -> dict[str, Any]:
    return {"description": description, "content": {PROBLEM_MEDIA_TYPE: {"schema": _PROBLEM_REF}}}


def _v2_error(description: str, *, also_problem: bool = False) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _V2_ERROR_REF}}
    if also_problem:  # answered by middleware in front of the /v2 routes
        content[PROBLEM_MEDIA_TYPE] = {"schema": _PROBLEM_REF}
    return {"description": description, "content": content}


def _add(responses: dict[str, Any], status: int, response: dict[str, Any]) -> None:
    existing = responses.get(str(status))
    if existing is None:
        responses[str(status)] = response
        return
    # Keep a route's own description, but the media types are the service's.
    existing["content"] = response["content"]


def _complete_errors(path: str, method: str, operation: dict[str, Any]) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    has_body = "requestBody" in operation
    has_parameters = bool(operation.get("parameters")) or has_body
    scope_needed = required_scope(method.upper(), path)
    v2 = is_v2_path(path)
    # The route's own error statuses: every 4xx/5xx answers a problem (or /v2's error body).
    for status in [s for s in responses if s[:1] in ("4", "5")]:
        description = responses[status].get("description") or _WHY.get(int(status), "Error")
        if v2:
            _add(responses, int(status), _v2_error(description))
        else:
            _add(responses, int(status), _problem(description))
    if v2:
        # The protocol has no 422: a request that does not validate is a 400.
        responses.pop("422", None)
        _add(responses, 400, _v2_error(_WHY[400], also_problem=True))
        if has_body:
            _add(responses, 413, _v2_error(_WHY[413], also_problem=True))
    else:
        _add(responses, 400, _problem(_WHY[400]))
        if has_parameters:
            _add(responses, 422, _problem(_WHY[422]))
        if has_body:
            _add(responses, 413, _problem(_WHY[413]))
            _add(responses, 415, _problem(_WHY[415]))
    if method != "get" and scope_needed in ("train", "admin") and not v2:
        # A write that loses a race with another (a unique name, a row deleted meanwhile).
        _add(responses, 409, _problem(_WHY[409]))
    if scope_needed is not None:
        _add(responses, 401, _problem(_WHY[401]))
        _add(responses, 403, _problem(_WHY[403].format(scope=scope_needed)))
        _add(responses, 429, _problem(_WHY[429]))
    if v2:
        _add(responses, 500, _v2_error(_WHY[500]))
    else:
        _add(responses, 500, _problem(_WHY[500]))
        if scope_needed is not None:
            _add(responses, 503, _problem(_WHY[503]))


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`X | None` as FastAPI documents an optional parameter, as just X.

    A query parameter or header is absent or a string; it cannot be JSON null, and a client
    generated from `anyOf: [X, null]` would send the text "null".
    """
    options = schema.get("anyOf")
    if not isinstance(options, list):
        return schema
    kept = [option for option in options if option.get("type") != "null"]
    if len(kept) == len(options):
        return schema
    rest = {key: value for key, value in schema.items() if key != "anyOf"}
    return {**rest, **kept[0]} if len(kept) == 1 else {**rest, "anyOf": kept}


def _complete_form_fields(operation: dict[str, Any], components: dict[str, Any]) -> None:
    """Form fields are text too: an optional one is absent, never null. A file part is
    also marked `format: binary`, the OpenAPI 3.0 way that generated clients (and gateways)
    still read, beside the `contentMediaType` that FastAPI writes for OpenAPI 3.1."""
    content = operation.get("requestBody", {}).get("content", {})
    multipart = content.get("multipart/form-data", {})
    form = multipart.get("schema", {})
    reference = form.get("$ref", "")
    target = components.get("schemas", {}).get(reference.rpartition("/")[2], form)
    for name, field in target.get("properties", {}).items():
        field = _without_null(field)
        if field.get("contentMediaType") == "application/octet-stream":
            field["format"] = "binary"
            # The part's media types Graft reads (octet-stream: by extension or content).
            multipart.setdefault("encoding", {})[name] = {
                "contentType": ", ".join(UPLOAD_MEDIA_TYPES)
            }
        target["properties"][name] = field


def _complete_parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if "schema" in parameter:
            parameter["schema"] = _without_null(parameter["schema"])
    responses = operation.setdefault("responses", {})
    if any(p.get("name") == "after" for p in operation.get("parameters", [])):
        _add(
            responses,
            404,
            _problem("The cursor `after` names no item of this list (cursor_not_found)"),
        )


def _secure(path: str, method: str, operation: dict[str, Any]) -> None:
    scope_needed = required_scope(method.upper(), path)
    if scope_needed is None:
        operation["security"] = []
        return
    operation["security"] = [{"bearerAuth": []}]
    operation["x-required-scope"] = scope_needed
    note = f"Requires an API key with the `{scope_needed}` scope (or `admin`)."
    operation["description"] = (operation.get("description", "") + "\n\n" + note).strip()


# (operationId, status) → {link name: link}. Ids flow from the operation that creates or
# returns a resource to those that take it, in the order a user walks the service.
def _link(operation_id: str, description: str, **fields: Any) -> dict[str, Any]:
    return {"operationId": operation_id, "description": description, **fields}


_DATASET_LINKS = {
    "GetDataset": _link(
        "get_dataset", "The dataset just stored", parameters={"dataset_id": "$response.body#/id"}
    ),
    "DeleteDataset": _link(
        "delete_dataset", "Delete it", parameters={"dataset_id": "$response.body#/id"}
    ),
    "TrainOnIt": _link(
        "create_source_training_job",
        "Train a source model on it",
        requestBody={"dataset_id": "$response.body#/id"},
    ),
    "FineTuneOnIt": _link(
        "create_fine_tuning_job",
        "Fine-tune a model on it (the target dataset)",
        requestBody={"dataset_id": "$response.body#/id"},
    ),
}
# From a builtin dataset, whose label column is always `target`, a whole small request: a
# stateful client then trains for real instead of guessing column names.
_BUILTIN_LINKS = {
    **_DATASET_LINKS,
    "TrainOnIt": _link(
        "create_source_training_job",
        "Train a small source model on it",
        requestBody={
            "dataset_id": "$response.body#/id",
            "target_column": "target",
            "model_name": "walk-source",
            "architecture": {"type": "mlp", "hidden_layers": [8]},
            "hyperparameters": {"epochs": 2},
        },
        **{"x-schemathesis": {"merge_body": False}},
    ),
}
_JOB_LINKS = {
    "GetJob": _link("get_job", "Poll the job", parameters={"job_id": "$response.body#/id"}),
    "JobEvents": _link(
        "list_job_events", "The job's events", parameters={"job_id": "$response.body#/id"}
    ),
    "CancelJob": _link("cancel_job", "Cancel it", parameters={"job_id": "$response.body#/id"}),
    "DeleteJob": _link(
        "delete_job", "Delete it once finished", parameters={"job_id": "$response.body#/id"}
    ),
}
_RESULT = {"name": "$response.body#/result/model_name", "version": "$response.body#/result/version"}
_VERSION = {"name": "$response.body#/name", "version": "$response.body#/version"}
_VERSION_LINKS = {
    "GetModel": _link("get_model", "The registered model", parameters={"name": _VERSION["name"]}),
    "Predict": _link(
        "predict",
        "Predict with this version",
        parameters={"path.name": _VERSION["name"], "query.version": _VERSION["version"]},
    ),
    "Weights": _link("download_weights", "Its weights", parameters=_VERSION),
    "SetAlias": _link(
        "set_alias",
        "Point an alias at it",
        parameters={"name": _VERSION["name"]},
        requestBody={"version": _VERSION["version"]},
    ),
    "FineTuneFromIt": _link(
        "create_fine_tuning_job",
        "Use it as the base of a fine-tuning job",
        requestBody={"base_model": {"name": _VERSION["name"], "version": _VERSION["version"]}},
    ),
    "DeleteVersion": _link("delete_version", "Delete it", parameters=_VERSION),
}
LINKS: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("create_dataset", "201"): _DATASET_LINKS,
    ("create_builtin_dataset", "201"): _BUILTIN_LINKS,
    ("create_source_training_job", "202"): _JOB_LINKS,
    ("create_fine_tuning_job", "202"): _JOB_LINKS,
    ("get_job", "200"): {
        "GetVersion": _link(
            "get_version", "The version a succeeded job registered", parameters=_RESULT
        ),
        "JobEvents": _JOB_LINKS["JobEvents"],
    },
    ("get_version", "200"): _VERSION_LINKS,
    ("get_model", "200"): {
        "ListVersions": _link(
            "list_versions", "Its versions", parameters={"name": "$response.body#/name"}
        ),
        "PredictDefault": _link(
            "predict",
            "Predict with its default version",
            parameters={"path.name": "$response.body#/name"},
        ),
        "GetLatest": _link(
            "get_version",
            "Its latest version",
            parameters={
                "name": "$response.body#/name",
                "version": "$response.body#/latest_version",
            },
        ),
        "DeleteModel": _link(
            "delete_model", "Delete it", parameters={"name": "$response.body#/name"}
        ),
    },
    ("set_alias", "200"): {
        "PredictByAlias": _link(
            "predict",
            "Predict through the alias",
            parameters={
                "path.name": "$response.body#/name",
                "query.alias": "$response.body#/alias",
            },
        ),
        "DeleteAlias": _link(
            "delete_alias",
            "Remove the alias",
            parameters={"name": "$response.body#/name", "alias": "$response.body#/alias"},
        ),
    },
    ("create_key", "201"): {
        "GetKey": _link("get_key", "The key", parameters={"key_id": "$response.body#/id"}),
        "RevokeKey": _link("revoke_key", "Revoke it", parameters={"key_id": "$response.body#/id"}),
    },
}


def _add_links(schema: dict[str, Any]) -> None:
    by_id = {op.get("operationId"): op for _, _, op in _operations(schema)}
    for (operation_id, status), links in LINKS.items():
        operation = by_id.get(operation_id)
        if operation is None:
            raise LookupError(f"an OpenAPI link starts at unknown operation {operation_id!r}")
        for link in links.values():
            if link["operationId"] not in by_id:
                raise LookupError(f"an OpenAPI link points at unknown {link['operationId']!r}")
        operation["responses"][status].setdefault("links", {}).update(links)


def complete_openapi(app: FastAPI) -> None:
    """Replace app.openapi with a builder that completes FastAPI's document (once)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})["bearerAuth"] = {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key: `Authorization: Bearer <key>`. Scopes: `read`, "
            "`predict`, `train`, `admin` (admin implies all).",
        }
        for path, method, operation in _operations(schema):
            _secure(path, method, operation)
            _complete_parameters(operation)
            _complete_form_fields(operation, components)
            _complete_errors(path, method, operation)
        # Nothing answers FastAPI's default validation body: it became the Problem.
        for unused in ("HTTPValidationError", "ValidationError"):
            components.get("schemas", {}).pop(unused, None)
        _add_links(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
