from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from app.db import migrate
from app.db.base import Base
from app.db.session import make_engine
from tests.conftest import fresh_postgres_database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database; on PostgreSQL one of its own, created for the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    with fresh_postgres_database("migrations") as url:
        yield url


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    url = empty_url
    migrate.upgrade(url)
    engine = make_engine(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    tables = set(inspect(engine).get_table_names())
    assert {
        "datasets",
        "jobs",
        "job_events",
        "registered_models",
        "model_versions",
        "model_aliases",
    } <= tables
    migrate.downgrade(url, "base")
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    migrate.upgrade(url)
    assert migrate.current_revision(engine) == migrate.head_revision()
    engine.dispose()


def test_models_match_migrations(empty_url: str) -> None:
    """The ORM and the migrations describe the same schema (no missing migration)."""
    url = empty_url
    migrate.upgrade(url)
    engine = make_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
