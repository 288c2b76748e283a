import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, inspect, make_url, text

# The in-process tests exercise features, not the door: auth is off for them, and the
# TestClient's Host is allowed. tests/api/test_auth.py turns auth on in its own settings, and
# the real servers of tests/integration start with a clean GRAFT_* environment (auth on).
os.environ.setdefault("GRAFT_AUTH", "disabled")
os.environ.setdefault("GRAFT_ALLOWED_HOSTS", "testserver,localhost,127.0.0.1")

from app.config import Settings
from app.db import migrate
from app.db.session import Database
from app.main import create_app


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One database migrated with Alembic; each test gets a copy of the file."""
    path = tmp_path_factory.mktemp("template") / "graft.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


# PostgreSQL runs of the database tests: tests (or modules) marked `postgres` run once on
# SQLite and once on PostgreSQL, the latter only when this variable names a server.
POSTGRES_VARIABLE = "GRAFT_TEST_DATABASE_URL"
POSTGRES_SKIP = (
    f"set {POSTGRES_VARIABLE}=postgresql+psycopg://user@host:5432/db to also run the "
    "database tests on PostgreSQL"
)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" in metafunc.fixturenames and metafunc.definition.get_closest_marker("postgres"):
        metafunc.parametrize("db_backend", ["sqlite", "postgresql"], indirect=True)


@pytest.fixture
def db_backend(request: pytest.FixtureRequest) -> str:
    backend: str = getattr(request, "param", "sqlite")
    return backend


@cache
def _admin_engine(server_url: str) -> Engine:
    return create_engine(server_url, isolation_level="AUTOCOMMIT", pool_size=1)


@contextmanager
def fresh_postgres_database(purpose: str) -> Iterator[str]:
    """A database of its own on the test server, dropped afterwards: test sessions that
    run at the same time against the same server never see each other's rows."""
    server_url = os.environ.get(POSTGRES_VARIABLE)
    if not server_url:
        pytest.skip(POSTGRES_SKIP)
    name = f"graft_test_{os.getpid()}_{secrets.token_hex(3)}_{purpose}"
    admin = _admin_engine(server_url)
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL database migrated once for the whole session."""
    with fresh_postgres_database("suite") as url:
        migrate.upgrade(url)
        yield url


@cache
def _suite_engine(url: str) -> Engine:
    return create_engine(url, pool_size=1)


def empty_postgres(url: str) -> None:
    """Per-test isolation: every table emptied (far cheaper than migrating again)."""
    engine = _suite_engine(url)
    tables = [t for t in inspect(engine).get_table_names() if t != "alembic_version"]
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


@pytest.fixture
def settings(
    tmp_path: Path, migrated_template: Path, db_backend: str, request: pytest.FixtureRequest
) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    if db_backend == "postgresql":
        url = request.getfixturevalue("postgres_url")
        empty_postgres(url)
        return Settings(data_dir=data_dir, workers=0, database_url=url)
    shutil.copy(migrated_template, data_dir / "graft.db")
    return Settings(data_dir=data_dir, workers=0)


@pytest.fixture
def database(settings: Settings) -> Iterator[Database]:
    db = Database(settings.resolved_database_url)
    yield db
    db.dispose()


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as test_client:
        yield test_client


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    # Tiny models train faster on one thread, and the suite shares two cores.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def trained_template(tmp_path_factory: pytest.TempPathFactory, migrated_template: Path) -> Path:
    """A database holding the Iris example already trained: a source model and one
    fine-tuned version per strategy, plus a diabetes regressor. Tests copy it."""
    from tests.helpers import build_iris_example

    folder = tmp_path_factory.mktemp("trained")
    shutil.copy(migrated_template, folder / "graft.db")
    example_settings = Settings(data_dir=folder, workers=0)
    with TestClient(create_app(example_settings)) as example_client:
        db = Database(example_settings.resolved_database_url)
        build_iris_example(example_client, db)
        db.dispose()
    return folder / "graft.db"


@pytest.fixture
def trained_client(tmp_path: Path, trained_template: Path) -> Iterator[TestClient]:
    data_dir = tmp_path / "trained"
    data_dir.mkdir()
    shutil.copy(trained_template, data_dir / "graft.db")
    app = create_app(Settings(data_dir=data_dir, workers=0))
    with TestClient(app, raise_server_exceptions=False) as test_client:
        yield test_client
