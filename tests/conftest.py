import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

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


@pytest.fixture
def settings(tmp_path: Path, migrated_template: Path) -> Settings:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
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
