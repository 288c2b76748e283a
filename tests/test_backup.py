"""`graft backup` / `graft restore`: consistent copies while writing, refusals, migrations."""

import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from alembic.script import ScriptDirectory
from fastapi.testclient import TestClient
from sqlalchemy import text

from app import cli
from app.config import Settings
from app.db import migrate
from app.db.backup import BackupError, backup, hold_data_dir_lock, restore
from app.db.models import Dataset
from app.db.session import Database, make_engine
from app.ids import new_id, utcnow
from app.services import dataset_files
from tests.conftest import fresh_postgres_database
from tests.helpers import builtin, train_source

REPO = Path(__file__).resolve().parent.parent


def _sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def _add_dataset(db: Database, size: int) -> str:
    content = os.urandom(size)
    with db.session_scope() as session:
        dataset = Dataset(
            id=new_id("ds"),
            name="noise",
            format="csv",
            rows=1,
            columns=[],
            size_bytes=size,
            sha256=hashlib.sha256(content).hexdigest(),
            origin={"kind": "test"},
            created_at=utcnow(),
        )
        session.add(dataset)
        dataset_files.write(session, dataset.id, content)
        return dataset.id


# Each dataset's stored sha256 beside its pieces, in order.
_STORED_FILES = (
    "SELECT d.id, d.sha256, p.content FROM datasets d "
    "JOIN dataset_parts p ON p.dataset_id = d.id ORDER BY d.id, p.seq"
)


def _hashed(rows: Any) -> dict[str, tuple[str, str]]:
    """id -> (stored sha256 column, sha256 of the stored bytes)."""
    digests: dict[str, Any] = {}
    stored: dict[str, str] = {}
    for dataset_id, sha256, piece in rows:
        digests.setdefault(dataset_id, hashlib.sha256()).update(piece)
        stored[dataset_id] = sha256
    return {key: (stored[key], digest.hexdigest()) for key, digest in digests.items()}


def _datasets(path: Path) -> dict[str, tuple[str, str]]:
    """id -> (stored sha256 column, sha256 of the stored bytes)."""
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(_STORED_FILES).fetchall()
    finally:
        conn.close()
    return _hashed(rows)


def _count(path: Path, table: str) -> int:
    conn = sqlite3.connect(path)
    try:
        count: int = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        return count
    finally:
        conn.close()


def _integrity(path: Path) -> list[tuple[str]]:
    conn = sqlite3.connect(path)
    try:
        return conn.execute("PRAGMA integrity_check").fetchall()
    finally:
        conn.close()


def _leftovers(*folders: Path) -> list[Path]:
    return [p for f in folders for p in f.glob("*") if p.suffix in (".partial", ".restoring")]


def _graft_file(folder: Path) -> Path:
    """A migrated, empty Graft database in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    migrate.upgrade(_sqlite_url(folder / "graft.db"))
    return folder / "graft.db"


# --- consistency while the service writes ---------------------------------------------


def test_backup_while_writing_restores_every_committed_dataset(
    client: TestClient, database: Database, settings: Settings, tmp_path: Path
) -> None:
    iris = builtin(client, "iris", start=0, stop=100)
    train_source(client, database, iris["id"], "iris-source")  # a model, a version, a job
    for _ in range(16):
        _add_dataset(database, 128 * 1024)  # ~2 MiB: the copy takes many 64-page steps
    live = settings.data_dir / "graft.db"
    before = _datasets(live)
    models, versions, jobs = (
        _count(live, t) for t in ("registered_models", "model_versions", "jobs")
    )

    committed: list[str] = []
    wrote = threading.Condition()
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_writing() -> None:
        try:
            while not stop.is_set() and len(committed) < 300:
                dataset_id = _add_dataset(database, 16 * 1024)
                with wrote:
                    committed.append(dataset_id)
                    wrote.notify_all()
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    steps: list[tuple[int, int]] = []
    written_during: list[int] = []

    def on_step(remaining: int, total: int) -> None:
        steps.append((remaining, total))
        if remaining == 0:
            return
        # Each step waits for a fresh commit, so writes land between the steps for sure.
        with wrote:
            seen = len(committed)
            assert wrote.wait_for(lambda: len(committed) > seen, timeout=10), errors
            written_during.append(len(committed) - seen)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    destination = tmp_path / "backups" / "graft-backup.db"
    destination.parent.mkdir()
    try:
        report = backup(settings.resolved_database_url, destination, pages=64, progress=on_step)
    finally:
        stop.set()
        writer.join()
    assert not errors
    assert len(steps) > 5 and sum(written_during) >= len(steps) - 1
    # A copy that restarted whenever a writer committed would grow its total as it went.
    assert len({total for _, total in steps}) == 1, steps
    assert _integrity(destination) == [("ok",)]
    assert not _leftovers(destination.parent)
    assert report.path == destination
    assert report.size_bytes == destination.stat().st_size
    assert report.sha256 == hashlib.sha256(destination.read_bytes()).hexdigest()
    assert report.revision == migrate.head_revision()
    assert (report.registered_models, report.model_versions, report.jobs) == (
        models,
        versions,
        jobs,
    )
    assert models == versions == 1 and jobs >= 1

    new_folder = tmp_path / "new" / "data"  # does not exist yet
    restored = restore(destination, _sqlite_url(new_folder / "graft.db"))
    after = _datasets(new_folder / "graft.db")
    for dataset_id, (stored, actual) in before.items():
        assert after[dataset_id] == (stored, actual)
        assert stored == actual
    # One snapshot: of the concurrent writes, those committed before it began, each whole.
    new = set(after) - set(before)
    assert new == set(committed[: len(new)]) and len(new) < len(committed)
    assert all(stored == actual for stored, actual in after.values())
    assert restored.datasets == report.datasets == len(after)
    assert restored.sha256 == report.sha256
    assert restored.revision == migrate.head_revision()
    assert (restored.registered_models, restored.model_versions, restored.jobs) == (
        models,
        versions,
        jobs,
    )
    conn = sqlite3.connect(new_folder / "graft.db")
    weights = conn.execute("SELECT sha256, weights FROM model_versions").fetchall()
    conn.close()
    assert [(s, hashlib.sha256(w).hexdigest()) for s, w in weights] == [(weights[0][0],) * 2]
    assert not _leftovers(new_folder)


# --- the CLI --------------------------------------------------------------------------


def _graft(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRAFT_")}
    env["GRAFT_DATA_DIR"] = str(data_dir)
    return subprocess.run(
        [sys.executable, "-m", "app.cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_cli_backup_refuses_to_overwrite_unless_forced_and_restores(
    client: TestClient, settings: Settings, tmp_path: Path
) -> None:
    builtin(client, "iris", start=0, stop=10)
    destination = tmp_path / "graft-backup.db"

    first = _graft(settings.data_dir, "backup", str(destination))
    assert first.returncode == 0, first.stderr
    digest = hashlib.sha256(destination.read_bytes()).hexdigest()
    assert f"backup written to {destination}" in first.stdout
    assert digest in first.stdout
    assert f"revision:  {migrate.head_revision()}" in first.stdout
    assert "datasets: 1," in first.stdout

    builtin(client, "iris", start=10, stop=20)
    again = _graft(settings.data_dir, "backup", str(destination))
    assert again.returncode == 2
    assert again.stderr.startswith("graft: ") and "already exists" in again.stderr
    assert "--force" in again.stderr
    assert hashlib.sha256(destination.read_bytes()).hexdigest() == digest

    forced = _graft(settings.data_dir, "backup", str(destination), "--force")
    assert forced.returncode == 0, forced.stderr
    assert "datasets: 2," in forced.stdout
    assert hashlib.sha256(destination.read_bytes()).hexdigest() != digest
    assert not _leftovers(tmp_path)

    new_data = tmp_path / "restored"
    restored = _graft(new_data, "restore", str(destination))
    assert restored.returncode == 0, restored.stderr
    assert f"into {new_data / 'graft.db'}" in restored.stdout
    assert "datasets: 2," in restored.stdout
    assert set(_datasets(new_data / "graft.db")) == set(_datasets(settings.data_dir / "graft.db"))

    refused = _graft(new_data, "restore", str(destination))
    assert refused.returncode == 2
    assert refused.stderr.startswith("graft: ") and "already holds 2 datasets" in refused.stderr


# --- refusals -------------------------------------------------------------------------


def test_backup_refuses_a_missing_database_and_the_live_file(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no database at"):
        backup(_sqlite_url(tmp_path / "absent" / "graft.db"), tmp_path / "b.db")
    assert not (tmp_path / "absent").exists()  # never created by the attempt
    live = _graft_file(tmp_path / "data")
    with pytest.raises(BackupError, match="live database itself"):
        backup(_sqlite_url(live), live, force=True)
    with pytest.raises(BackupError, match="does not exist"):
        backup(_sqlite_url(live), tmp_path / "nowhere" / "b.db")
    assert _integrity(live) == [("ok",)] and _count(live, "alembic_version") == 1
    assert not _leftovers(tmp_path, tmp_path / "data")


def _damage(path: Path) -> None:
    """Leave an index missing a row of its table: a file SQLite opens but finds damaged."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    conn.execute("CREATE INDEX ix_t ON t (x)")
    conn.execute("INSERT INTO t VALUES (1)")
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "UPDATE sqlite_master SET type='table', name='hidden', tbl_name='hidden', "
        "sql='CREATE TABLE hidden (x)' WHERE name='ix_t'"
    )
    conn.close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO t VALUES (2)")  # not entered in the hidden index
    conn.execute("PRAGMA writable_schema=ON")
    conn.execute(
        "UPDATE sqlite_master SET type='index', name='ix_t', tbl_name='t', "
        "sql='CREATE INDEX ix_t ON t (x)' WHERE name='hidden'"
    )
    conn.close()


def test_damaged_database_is_neither_backed_up_nor_restored(tmp_path: Path) -> None:
    live = _graft_file(tmp_path / "data")
    _damage(live)
    with pytest.raises(BackupError, match="failed its integrity check"):
        backup(_sqlite_url(live), tmp_path / "b.db")
    assert not (tmp_path / "b.db").exists()
    target = tmp_path / "target" / "graft.db"
    with pytest.raises(BackupError, match="is damaged"):
        restore(live, _sqlite_url(target))
    assert not target.exists()
    assert not _leftovers(tmp_path, tmp_path / "data", tmp_path / "target")


def test_restore_refuses_files_that_are_not_graft_backups(tmp_path: Path) -> None:
    target = tmp_path / "target" / "graft.db"
    text_file = tmp_path / "notes.db"
    text_file.write_text("id,name\n1,iris\n")
    with pytest.raises(BackupError, match="not a Graft backup"):
        restore(text_file, _sqlite_url(target))
    bare = tmp_path / "bare.db"
    conn = sqlite3.connect(bare)
    conn.execute("CREATE TABLE datasets (id TEXT)")
    conn.close()
    with pytest.raises(BackupError, match=r"not a Graft backup.*alembic_version"):
        restore(bare, _sqlite_url(target))
    with pytest.raises(BackupError, match="no backup file"):
        restore(tmp_path / "missing.db", _sqlite_url(target))
    dump = tmp_path / "pg.dump"
    dump.write_bytes(b"PGDMP\x01\x0e\x00" + bytes(64))
    with pytest.raises(BackupError, match="PostgreSQL backup"):
        restore(dump, _sqlite_url(target))
    assert not target.exists()
    assert not _leftovers(tmp_path, tmp_path / "target")


def test_restore_into_a_database_with_data_needs_force(tmp_path: Path) -> None:
    source = _graft_file(tmp_path / "a")
    kept = _add_dataset(Database(_sqlite_url(source)), 100)
    saved = tmp_path / "a.backup"
    backup(_sqlite_url(source), saved)

    target = _graft_file(tmp_path / "b")
    target_db = Database(_sqlite_url(target))
    replaced = _add_dataset(target_db, 100)
    target_db.dispose()
    with pytest.raises(BackupError, match=r"already holds 1 datasets.*--force"):
        restore(saved, _sqlite_url(target))
    assert set(_datasets(target)) == {replaced}
    assert not _leftovers(tmp_path / "b")

    report = restore(saved, _sqlite_url(target), force=True)
    assert report.datasets == 1
    assert set(_datasets(target)) == {kept}
    assert not [p for p in (tmp_path / "b").iterdir() if p.name.endswith(("-wal", "-journal"))]


_HOLD_LOCK = """
import sys
from pathlib import Path
from app.db.backup import hold_data_dir_lock
with hold_data_dir_lock(Path(sys.argv[1])):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_restore_refuses_while_a_graft_process_holds_the_folder(tmp_path: Path) -> None:
    source = _graft_file(tmp_path / "a")
    saved = tmp_path / "a.backup"
    backup(_sqlite_url(source), saved)
    folder = tmp_path / "live"
    target = _graft_file(folder)
    before = target.read_bytes()

    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(folder)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        using = rf"a Graft process is using {re.escape(str(folder))}; stop `graft serve`"
        with pytest.raises(BackupError, match=using):
            restore(saved, _sqlite_url(target), force=True)
        assert target.read_bytes() == before
        assert not _leftovers(folder)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # lets the holder leave its `with` and exit
        holder.wait(timeout=30)
    restore(saved, _sqlite_url(target), force=True)


def test_serve_and_worker_hold_the_lock_on_sqlite(tmp_path: Path) -> None:
    source = _graft_file(tmp_path / "a")
    saved = tmp_path / "a.backup"
    backup(_sqlite_url(source), saved)
    folder = tmp_path / "live"
    with cli._using_data_dir(Settings(data_dir=folder, database_url=None)):
        assert (folder / "graft.lock").exists()
        with pytest.raises(BackupError, match="a Graft process is using"):
            restore(saved, _sqlite_url(folder / "graft.db"))
        # Two Graft processes share the folder happily; only a restore is kept out.
        with hold_data_dir_lock(folder):
            pass
    restore(saved, _sqlite_url(folder / "graft.db"))


# --- schema revisions -----------------------------------------------------------------


def test_restore_of_an_older_schema_comes_up_at_head(tmp_path: Path) -> None:
    old = tmp_path / "old" / "graft.db"
    old.parent.mkdir()
    url = _sqlite_url(old)
    first = ScriptDirectory.from_config(migrate.alembic_config(url)).get_base()
    assert first is not None and first != migrate.head_revision()
    migrate.upgrade(url, first)
    conn = sqlite3.connect(old)
    conn.execute(
        "INSERT INTO datasets (id, name, format, rows, columns, size_bytes, sha256, origin, "
        "created_at, content) VALUES ('ds_old', 'old', 'csv', 1, '[]', 3, ?, '{}', "
        "'2026-11-27 00:00:00.000000', ?)",
        (hashlib.sha256(b"abc").hexdigest(), b"abc"),
    )
    conn.commit()
    conn.close()
    saved = tmp_path / "old.backup"
    assert backup(url, saved).revision == first

    target = tmp_path / "new" / "graft.db"
    report = restore(saved, _sqlite_url(target))
    assert report.source_revision == first
    assert report.revision == migrate.head_revision()
    engine = make_engine(_sqlite_url(target))
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
    finally:
        engine.dispose()
    assert _datasets(target) == {"ds_old": (hashlib.sha256(b"abc").hexdigest(),) * 2}


# --- PostgreSQL -----------------------------------------------------------------------


def test_postgres_tools_missing_give_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    url = "postgresql+psycopg://graft:secret@127.0.0.1:1/graft"  # never reached
    with pytest.raises(BackupError, match=r"pg_dump is not on PATH.*PostgreSQL client tools"):
        backup(url, tmp_path / "b.dump")
    dump = tmp_path / "a.dump"
    dump.write_bytes(b"PGDMP" + bytes(64))
    with pytest.raises(BackupError, match="pg_restore is not on PATH"):
        restore(dump, url)
    assert not _leftovers(tmp_path)


def _pg_datasets(url: str) -> dict[str, tuple[str, str]]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(_STORED_FILES)).all()
    finally:
        engine.dispose()
    return _hashed(rows)


def test_postgres_backup_and_restore_round_trip(tmp_path: Path) -> None:
    saved = tmp_path / "graft.dump"
    with fresh_postgres_database("backup_src") as url:
        migrate.upgrade(url)
        db = Database(url)
        ids = {_add_dataset(db, 4096) for _ in range(3)}
        report = backup(url, saved)
        extra = _add_dataset(db, 10)  # after the backup: a restore must take it away again
        db.dispose()
        assert saved.read_bytes()[:5] == b"PGDMP"
        assert report.datasets == 3 and report.revision == migrate.head_revision()
        assert report.sha256 == hashlib.sha256(saved.read_bytes()).hexdigest()
        original = _pg_datasets(url)

        with pytest.raises(BackupError, match="already holds 4 datasets"):
            restore(saved, url)
        forced = restore(saved, url, force=True)
        assert forced.datasets == 3 and extra not in _pg_datasets(url)

    with fresh_postgres_database("backup_dst") as other:
        restored = restore(saved, other)
        assert restored.revision == migrate.head_revision() and restored.datasets == 3
        copied = _pg_datasets(other)
        assert set(copied) == ids
        assert all(copied[i] == original[i] and copied[i][0] == copied[i][1] for i in ids)
