"""The OpenAPI document keeps every promise of the design contract (API.md).

API.md fixes the paths and the fields clients rely on; renaming or removing one is a breaking
change. These tests read the routes and the field lists out of the markdown itself, so a route
or a field that disappears from /openapi.json fails here, and so does one added to the contract
but never built.

The contract lives in the shared design folder beside the repository; tests/contract/API.md is
a copy of it for clones without that folder, and a test fails when the two drift apart.
"""

import copy
import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
SHARED_CONTRACT = REPO.parent / "shared" / "design" / "API.md"
CONTRACT_COPY = REPO / "tests" / "contract" / "API.md"

# Planned routes, listed in the contract before they exist.
FUTURE_SECTION = "Added in the second stage"
# Served by FastAPI itself (docs) or deliberately left out of the document: checked by calling.
PUBLIC_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json"})

# Component schema -> the words in API.md right before the backticked list of its fields.
DOCUMENTED_FIELD_LISTS = {
    "DatasetRead": "Dataset:",
    "JobRead": "Job:",
    "EventRead": "Event:",
    "ModelVersionRead": "ModelVersion:",
    "RegisteredModelRead": "registered models:",
    "KeyCreated": "(admin) → 201",
    "PredictResponse": "Response:",
}

_ROUTE = re.compile(r"`(GET|POST|PUT|PATCH|DELETE) (/[^`\s?]*)")
_CODE_SPAN = re.compile(r"`([^`]+)`")
# A span like `"classes": [...]`: another member of the object whose list came before it.
_JSON_MEMBER = re.compile(r'^"\w+"\s*:')
_IDENTIFIER = re.compile(r"[A-Za-z_]\w*")
_OPENING = {"(": ")", "[": "]", "{": "}"}


def contract_text() -> str:
    for path in (SHARED_CONTRACT, CONTRACT_COPY):
        if path.exists():
            return path.read_text(encoding="utf-8")
    pytest.skip(f"no API contract to check against: neither {SHARED_CONTRACT} nor {CONTRACT_COPY}")


def sections(contract: str) -> dict[str, str]:
    """Each `## ` section's text by its title; the text before the first one is under ""."""
    # Split on a captured title: [preamble, title, body, title, body, ...].
    parts = re.split(r"^## (.*)$", contract, flags=re.MULTILINE)
    return {"": parts[0], **dict(zip(parts[1::2], parts[2::2], strict=True))}


def normalised(path: str) -> str:
    # The contract says {id} where the code says {dataset_id}, {job_id} or {key_id}.
    return re.sub(r"\{[^}]*\}", "{}", path)


def contract_routes(contract: str) -> set[tuple[str, str]]:
    """Every `METHOD /path` the contract names, outside the section of future work."""
    return {
        (method, path)
        for title, body in sections(contract).items()
        if title != FUTURE_SECTION
        for method, path in _ROUTE.findall(body)
    }


def document_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), normalised(path))
        for path, operations in document["paths"].items()
        for method in operations
    }


def missing_routes(document: dict[str, Any], contract: str) -> list[str]:
    documented = document_routes(document)
    return sorted(
        f"{method} {path}"
        for method, path in contract_routes(contract)
        if path not in PUBLIC_PATHS and (method, normalised(path)) not in documented
    )


def top_level_fields(field_list: str) -> list[str]:
    """`id, kind ("a" | "b"), result {"x", "y"} | null` -> [id, kind, result].

    What sits inside brackets describes a field's value (its enumeration, its nested fields),
    so only the text outside every bracket names fields; a list wrapped in one object's
    braces is that object's fields.
    """
    text = field_list.strip()
    if text.startswith("{") and text.endswith("}"):
        text = text[1:-1]
    outside, closers = [], []
    for char in text:
        if char in _OPENING:
            closers.append(_OPENING[char])
        elif closers and char == closers[-1]:
            closers.pop()
        elif not closers:
            outside.append(char)
    names = []
    for item in "".join(outside).split(","):
        name = _IDENTIFIER.search(item.split(":")[0])
        if name:
            names.append(name.group())
    return names


def documented_fields(contract: str, label: str) -> list[str]:
    """The fields listed in the first code span after `label`, plus the spans later in the
    same paragraph that add members to it (`"classes": [...]`)."""
    start = contract.index(label) + len(label)
    paragraph = contract[start:].split("\n\n")[0]
    spans = _CODE_SPAN.findall(paragraph)
    assert spans, f"no `field list` after {label!r} in the contract"
    field_lists = [spans[0], *(span for span in spans[1:] if _JSON_MEMBER.match(span))]
    return [name for field_list in field_lists for name in top_level_fields(field_list)]


def missing_fields(document: dict[str, Any], contract: str) -> list[str]:
    schemas = document["components"]["schemas"]
    missing = []
    for schema_name, label in DOCUMENTED_FIELD_LISTS.items():
        if schema_name not in schemas:
            missing.append(f"{schema_name} (no such component schema)")
            continue
        properties = schemas[schema_name].get("properties", {})
        missing += [
            f"{schema_name}.{field}"
            for field in documented_fields(contract, label)
            if field not in properties
        ]
    return missing


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_every_contract_route_is_in_the_document(document: dict[str, Any]) -> None:
    contract = contract_text()
    assert len(contract_routes(contract)) > 20, "the route parser no longer finds the routes"
    assert missing_routes(document, contract) == []


def test_the_public_contract_routes_answer(client: TestClient) -> None:
    public = {path for _, path in contract_routes(contract_text()) if not path.startswith("/v1")}
    assert public == PUBLIC_PATHS
    for path in sorted(public):
        assert client.get(path).status_code == 200, path


def test_every_contract_field_is_in_its_schema(document: dict[str, Any]) -> None:
    assert missing_fields(document, contract_text()) == []


def test_the_field_lists_are_read_as_written() -> None:
    contract = contract_text()
    assert top_level_fields(
        'id, result {"model_name", "version"} | null, error {"code", "message"} | null'
    ) == ["id", "result", "error"]
    assert documented_fields(contract, DOCUMENTED_FIELD_LISTS["PredictResponse"]) == [
        "model",
        "predictions",
        "classes",
        "probabilities",
    ]
    assert documented_fields(contract, DOCUMENTED_FIELD_LISTS["KeyCreated"]) == [
        "id",
        "name",
        "scopes",
        "created_at",
        "expires_at",
        "secret",
    ]


def test_a_missing_field_or_route_is_reported(document: dict[str, Any]) -> None:
    contract = contract_text()
    broken = copy.deepcopy(document)
    del broken["components"]["schemas"]["DatasetRead"]["properties"]["sha256"]
    del broken["paths"]["/v1/jobs/{job_id}/events"]
    assert missing_fields(broken, contract) == ["DatasetRead.sha256"]
    assert missing_routes(broken, contract) == ["GET /v1/jobs/{id}/events"]


def test_the_contract_copy_matches_the_shared_contract() -> None:
    if not SHARED_CONTRACT.exists():
        pytest.skip(f"no shared contract at {SHARED_CONTRACT} to compare {CONTRACT_COPY} with")
    assert CONTRACT_COPY.read_text(encoding="utf-8") == SHARED_CONTRACT.read_text(
        encoding="utf-8"
    ), f"{CONTRACT_COPY} is out of date: copy {SHARED_CONTRACT} over it"
