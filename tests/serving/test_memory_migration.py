from pathlib import Path

from sqlalchemy import text

from app.db import migrate
from app.db.session import make_engine
from app.ml import serialization
from app.ml.architectures import build_mlp


def test_upgrade_fills_memory_bytes_of_existing_versions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, "78bb20742809")
    model = build_mlp(4, 3, hidden_layers=[10])
    weights = serialization.weights_to_bytes(model)
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO registered_models (name, created_at, last_version)"
                " VALUES ('m', '2026-11-27 00:00:00', 1)"
            )
        )
        connection.execute(
            text(
                "INSERT INTO model_versions (id, model_name, version, created_at, kind,"
                " dataset_id, task, signature, architecture, hyperparameters, preprocessing,"
                " metrics, size_bytes, sha256, weights) VALUES ('mv_1', 'm', 1,"
                " '2026-11-27 00:00:00', 'source', 'ds_1', 'classification', '{}', '{}', '{}',"
                " '{}', '{}', :size, 'x', :weights)"
            ),
            {"size": len(weights), "weights": weights},
        )
    migrate.upgrade(url)
    with engine.connect() as connection:
        stored = connection.execute(text("SELECT memory_bytes FROM model_versions")).scalar_one()
    engine.dispose()
    assert stored == sum(p.numel() * 4 for p in model.parameters()) == (40 + 10 + 30 + 3) * 4
