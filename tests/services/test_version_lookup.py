"""The prediction path's raw-SQL version lookup agrees with the registry's ORM resolution,
for every way a version is asked for: by number, by alias, by default (`production`, else the
latest), and for names, numbers and aliases that do not exist."""

import itertools

import pytest
import torch
from sqlalchemy.orm import Session

from app.db.session import Database
from app.errors import NotFound
from app.ml import serialization
from app.services import registry as registry_service
from app.services.registry.resolution import VersionLookup

pytestmark = pytest.mark.postgres

_FIELDS = {
    "dataset_id": "ds_x",
    "task": "classification",
    "signature": {"inputs": [], "classes": ["a"], "target": "y"},
    "architecture": {},
    "hyperparameters": {},
    "preprocessing": {},
    "metrics": {},
    "size_bytes": 1,
    "sha256": "0" * 64,
    "memory_bytes": 1,
    "kind": "source",
    "strategy": None,
    "parent_name": None,
    "parent_version": None,
}


def _register(session: Session, name: str, count: int) -> None:
    weights = serialization.weights_to_bytes(torch.nn.Linear(1, 1))
    for _ in range(count):
        registry_service.register_version(session, name=name, weights=weights, **_FIELDS)


def _orm(database: Database, name: str, version: int | None, alias: str | None) -> object:
    with database.read_scope() as session:
        try:
            found = registry_service.resolve(session, name, version=version, alias=alias)
        except NotFound:
            return None
        return (found.id, found.version)


def test_the_fast_lookup_agrees_with_the_orm_path(database: Database) -> None:
    with database.session_scope() as session:
        _register(session, "aliased", 3)
        _register(session, "plain", 2)
        registry_service.set_alias(session, "aliased", "production", 2)
        registry_service.set_alias(session, "aliased", "canary", 1)
        registry_service.set_alias(session, "plain", "canary", 2)
    lookup = VersionLookup(database)
    try:
        names = ["aliased", "plain", "missing"]
        numbers = [None, 1, 2, 3, 4]
        aliases = [None, "production", "canary", "nope"]
        asked = 0
        for name, version, alias in itertools.product(names, numbers, aliases):
            if version is not None and alias is not None:
                continue  # pinned reads combine two lookups (check_alias_target)
            assert lookup.find(name, version, alias) == _orm(database, name, version, alias), (
                name,
                version,
                alias,
            )
            asked += 1
        assert asked == 3 * (5 + 3)
        # Moves are seen at once: the lookup reads committed state on every call.
        with database.session_scope() as session:
            registry_service.set_alias(session, "aliased", "production", 3)
        assert lookup.find("aliased", None, None) == _orm(database, "aliased", None, None)
        assert lookup.find("aliased", None, None)[1] == 3  # type: ignore[index]
    finally:
        lookup.close()
