import json
from pathlib import Path

from sqlalchemy import text

from app.db import migrate
from app.db.session import make_engine

_VERSION = (
    "INSERT INTO model_versions (id, model_name, version, created_at, kind, strategy,"
    " parent_name, parent_version, dataset_id, task, signature, architecture, hyperparameters,"
    " preprocessing, metrics, size_bytes, sha256, weights, memory_bytes) VALUES (:id, :name, 1,"
    " :at, :kind, :strategy, :parent, :parent_version, :dataset, 'classification', '{}', '{}',"
    " '{}', '{}', '{}', 1, 'x', X'00', 4)"
)


def test_upgrade_fills_lineage_of_existing_versions(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    migrate.upgrade(url, "a4b2c6d8e0f1")
    engine = make_engine(url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO datasets (id, name, format, rows, columns, size_bytes, sha256,"
                " origin, created_at, content) VALUES ('ds_src', 'iris', 'csv', 100, '[]', 7,"
                " 'abc123', '{}', '2026-11-27 00:00:00', X'00')"
            )
        )
        for name in ("src", "tuned"):
            connection.execute(
                text(
                    "INSERT INTO registered_models (name, created_at, last_version)"
                    " VALUES (:name, '2026-11-27 00:00:00', 1)"
                ),
                {"name": name},
            )
        connection.execute(
            text(_VERSION),
            {
                "id": "mv_1",
                "name": "src",
                "at": "2026-11-27 00:00:00",
                "kind": "source",
                "strategy": None,
                "parent": None,
                "parent_version": None,
                "dataset": "ds_src",
            },
        )
        # Its target dataset was deleted before the upgrade: the hash is unknown, not made up.
        connection.execute(
            text(_VERSION),
            {
                "id": "mv_2",
                "name": "tuned",
                "at": "2026-11-28 00:00:00",
                "kind": "fine_tuned",
                "strategy": "parameter",
                "parent": "src",
                "parent_version": 1,
                "dataset": "ds_gone",
            },
        )
    migrate.upgrade(url)
    with engine.connect() as connection:
        rows = dict(connection.execute(text("SELECT id, lineage FROM model_versions")).all())
    engine.dispose()
    source, tuned = json.loads(rows["mv_1"]), json.loads(rows["mv_2"])
    assert [(e["name"], e["version"]) for e in tuned] == [("tuned", 1), ("src", 1)]
    assert tuned[1] == source[0]
    assert source[0]["datasets"] == [
        {
            "id": "ds_src",
            "role": "training",
            "name": "iris",
            "sha256": "abc123",
            "rows": 100,
            "size_bytes": 7,
        }
    ]
    assert tuned[0]["datasets"][0]["id"] == "ds_gone"
    assert tuned[0]["datasets"][0]["sha256"] is None
