"""Consistent backups and restores of Graft's one database (SQLite backup API or pg_dump).

Two engines (SQLite's backup API, pg_dump/pg_restore) behind one command, with the
refusals and checks both share; long because each refusal says what to do.
"""

import hashlib
import logging
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, inspect, make_url, text

log = logging.getLogger(__name__)

# The rows a report counts: what a user recognises as "their data".
_COUNTED_TABLES = ("datasets", "registered_models", "model_versions", "jobs")
# Tables whose rows make a restore target "not empty" (versions and events hang off these).
_OCCUPYING_TABLES = ("datasets", "registered_models", "jobs")
_SQLITE_MAGIC = b"SQLite format 3\x00"
_PG_DUMP_MAGIC = b"PGDMP"
LOCK_FILE_NAME = "graft.lock"

Progress = Callable[[int, int], None]


class BackupError(Exception):
    """A backup or restore was refused or failed; the message says why and what to do."""


@dataclass(frozen=True)
class BackupReport:
    """What a backup file holds: for `restore`, the file read and the database it became."""

    path: Path
    size_bytes: int
    sha256: str
    revision: str | None
    datasets: int
    registered_models: int
    model_versions: int
    jobs: int
    # restore only: the schema revision the backup was at before migrations ran on it.
    source_revision: str | None = None

    def describe(self) -> str:
        revision = self.revision or "none"
        if self.source_revision is not None and self.source_revision != self.revision:
            revision += f" (upgraded from {self.source_revision})"
        return "\n".join(
            [
                f"  file:      {self.path}",
                f"  size:      {_human_size(self.size_bytes)} ({self.size_bytes} bytes)",
                f"  sha256:    {self.sha256}",
                f"  revision:  {revision}",
                f"  datasets: {self.datasets}, registered models: {self.registered_models}, "
                f"model versions: {self.model_versions}, jobs: {self.jobs}",
            ]
        )


def _human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    value, unit = size / 1024, "KiB"
    for larger in ("MiB", "GiB", "TiB"):
        if value < 1024:
            break
        value, unit = value / 1024, larger
    return f"{value:.1f} {unit}"


def sqlite_file(database_url: str) -> Path | None:
    """The file of a SQLite URL; None for other databases and for in-memory SQLite."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite":
        return None
    if not url.database or url.database == ":memory:" or url.query.get("mode") == "memory":
        return None
    return Path(url.database)


def _backend(database_url: str) -> str:
    backend = make_url(database_url).get_backend_name()
    if backend == "sqlite":
        if sqlite_file(database_url) is None:
            raise BackupError("an in-memory SQLite database has no file to back up or restore")
        return backend
    if backend == "postgresql":
        return backend
    raise BackupError(f"backups support SQLite and PostgreSQL, not {backend!r} databases")


# --- data-folder lock -------------------------------------------------------------------


@contextmanager
def hold_data_dir_lock(data_dir: Path) -> Iterator[None]:
    """Hold a shared lock on `<data_dir>/graft.lock` for the block: tells `restore` that a
    Graft process has the SQLite file open and must not have it swapped underneath."""
    if sys.platform == "win32":  # no flock; the guard is advisory and Linux-first
        yield
        return
    import fcntl

    fd = _open_lock_file(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            # Only a restore takes the lock exclusively; start once it has finished.
            log.warning("waiting for the restore of %s to finish", data_dir)
            fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextmanager
def _exclusive_data_dir_lock(data_dir: Path) -> Iterator[None]:
    if sys.platform == "win32":
        yield
        return
    import fcntl

    fd = _open_lock_file(data_dir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BackupError(
                f"a Graft process is using {data_dir}; stop `graft serve` and workers first"
            ) from None
        yield
    finally:
        os.close(fd)


def _open_lock_file(data_dir: Path) -> int:
    data_dir.mkdir(parents=True, exist_ok=True)
    # Never deleted: removing a lock file lets two processes lock two different inodes.
    return os.open(data_dir / LOCK_FILE_NAME, os.O_RDWR | os.O_CREAT, 0o644)


# --- files ------------------------------------------------------------------------------


def _sidecars(database: Path) -> list[Path]:
    return [database.with_name(database.name + suffix) for suffix in ("-wal", "-shm", "-journal")]


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _remove_with_sidecars(path: Path) -> None:
    for leftover in [path, *_sidecars(path)]:
        leftover.unlink(missing_ok=True)


@contextmanager
def _removed_on_failure(path: Path) -> Iterator[None]:
    _remove_with_sidecars(path)  # a leftover of a run that was killed
    try:
        yield
    except BaseException:
        _remove_with_sidecars(path)
        raise


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; Windows cannot open folders and needs no such step.
    if sys.platform == "win32":
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _check_destination(destination: Path, force: bool, live: Path | None) -> None:
    if live is not None and any(_same_file(destination, p) for p in [live, *_sidecars(live)]):
        raise BackupError(f"{destination} is the live database itself; choose another path")
    if destination.is_dir():
        raise BackupError(f"{destination} is a folder; give the path of the file to write")
    if destination.exists() and not force:
        raise BackupError(
            f"{destination} already exists; pass --force to overwrite it, or choose another path"
        )
    if not destination.parent.is_dir():
        raise BackupError(f"folder {destination.parent} does not exist; create it first")


def _file_kind(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            head = handle.read(len(_SQLITE_MAGIC))
    except OSError as exc:
        raise BackupError(f"cannot read {path}: {exc}") from exc
    if head == _SQLITE_MAGIC:
        return "sqlite"
    if head.startswith(_PG_DUMP_MAGIC):
        return "pg_dump"
    return "other"


def _check_source_file(source: Path) -> None:
    if not source.exists():
        raise BackupError(f"no backup file at {source}")
    if not source.is_file():
        raise BackupError(f"{source} is not a file; give the path of a backup file")


# --- SQLite -----------------------------------------------------------------------------


def _connect(path: Path, mode: str) -> sqlite3.Connection:
    # A URI with mode=ro/rw: SQLite then fails on a missing file instead of creating one.
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=30, isolation_level=None
    )
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _sqlite_summary(conn: sqlite3.Connection) -> tuple[str | None, dict[str, int]]:
    """The schema revision (None without alembic_version) and the row counts."""
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    revision = None
    if "alembic_version" in tables:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        revision = row[0] if row else None
    counts = dict.fromkeys(_COUNTED_TABLES, 0)
    for table in tables.intersection(_COUNTED_TABLES):
        counts[table] = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    return revision, counts


def _has_alembic_version(conn: sqlite3.Connection) -> bool:
    query = "SELECT 1 FROM sqlite_master WHERE type='table' AND name='alembic_version'"
    return conn.execute(query).fetchone() is not None


def _integrity_problems(conn: sqlite3.Connection) -> list[str]:
    rows = [str(row[0]) for row in conn.execute("PRAGMA integrity_check").fetchall()]
    return [] if rows == ["ok"] else rows


def _backup_sqlite(
    source: Path, destination: Path, force: bool, pages: int, progress: Progress | None
) -> BackupReport:
    if not source.is_file():
        raise BackupError(
            f"no database at {source}; check GRAFT_DATA_DIR / GRAFT_DATABASE_URL "
            "(or run `graft migrate` to create it)"
        )
    _check_destination(destination, force, source)
    partial = _sibling(destination, ".partial")
    with _removed_on_failure(partial):
        try:
            src = _connect(source, "rw")
            try:
                dst = sqlite3.connect(partial, isolation_level=None)
                try:
                    # One read transaction across every step: in WAL mode its snapshot stays
                    # fixed while the service commits, so the copy neither blocks writers nor
                    # restarts each time one of them commits between two steps.
                    src.execute("BEGIN")
                    src.execute("SELECT count(*) FROM sqlite_master").fetchone()
                    src.backup(dst, pages=pages, progress=_step_callback(progress), sleep=0)
                    src.execute("COMMIT")
                    # A single self-contained file: no -wal needed beside the backup.
                    dst.execute("PRAGMA journal_mode=DELETE").fetchone()
                    problems = _integrity_problems(dst)
                    if problems:
                        raise BackupError(
                            f"the copy of {source} failed its integrity check "
                            f"({'; '.join(problems[:3])}); the live database may be damaged: "
                            "run `sqlite3 graft.db 'PRAGMA integrity_check'` and restore an "
                            "older backup"
                        )
                    if not _has_alembic_version(dst):
                        raise BackupError(
                            f"{source} is not a Graft database (no alembic_version table); "
                            "run `graft migrate` on it first"
                        )
                    revision, counts = _sqlite_summary(dst)
                finally:
                    dst.close()
            finally:
                src.close()
        except sqlite3.DatabaseError as exc:
            raise BackupError(f"could not back up {source}: {exc}") from exc
        return _finish(partial, destination, revision, counts)


def _step_callback(progress: Progress | None) -> Callable[[int, int, int], None] | None:
    if progress is None:
        return None

    def _on_step(_status: int, remaining: int, total: int) -> None:
        progress(remaining, total)

    return _on_step


def _finish(
    partial: Path, destination: Path, revision: str | None, counts: dict[str, int]
) -> BackupReport:
    """fsync the finished copy and move it into place atomically."""
    try:
        _fsync_file(partial)
        digest, size = _sha256(partial), partial.stat().st_size
        # Stale sidecars of an overwritten file would be replayed into the new one.
        for sidecar in _sidecars(destination):
            sidecar.unlink(missing_ok=True)
        os.replace(partial, destination)
        _fsync_dir(destination.parent)
    except OSError as exc:
        raise BackupError(f"could not write {destination}: {exc}") from exc
    return BackupReport(
        path=destination,
        size_bytes=size,
        sha256=digest,
        revision=revision,
        datasets=counts["datasets"],
        registered_models=counts["registered_models"],
        model_versions=counts["model_versions"],
        jobs=counts["jobs"],
    )


def _check_sqlite_backup(source: Path) -> str | None:
    """Refuse anything but an intact SQLite file with Graft's schema; its revision."""
    _check_source_file(source)
    kind = _file_kind(source)
    if kind == "pg_dump":
        raise BackupError(
            f"{source} is a PostgreSQL backup (pg_dump); restore it into a PostgreSQL database "
            "(set GRAFT_DATABASE_URL)"
        )
    if kind != "sqlite":
        raise BackupError(f"{source} is not a Graft backup (not an SQLite database file)")
    try:
        conn = _connect(source, "ro")
        try:
            problems = _integrity_problems(conn)
            if problems:
                raise BackupError(
                    f"{source} is damaged: integrity check says {'; '.join(problems[:3])}; "
                    "restore another backup"
                )
            if not _has_alembic_version(conn):
                raise BackupError(f"{source} is not a Graft backup (no alembic_version table)")
            revision, _ = _sqlite_summary(conn)
            return revision
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(f"{source} is not a Graft backup ({exc})") from exc


def _sqlite_occupants(target: Path) -> dict[str, int]:
    try:
        conn = _connect(target, "rw")
        try:
            _, counts = _sqlite_summary(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        raise BackupError(
            f"cannot read the current database {target} ({exc}); pass --force to replace it"
        ) from exc
    return counts


def _refuse_occupied(target: str, counts: dict[str, int]) -> None:
    if any(counts[table] for table in _OCCUPYING_TABLES):
        raise BackupError(
            f"{target} already holds {counts['datasets']} datasets, "
            f"{counts['registered_models']} registered models and {counts['jobs']} jobs; "
            "pass --force to replace them with the backup"
        )


def _restore_sqlite(source: Path, target: Path, database_url: str, force: bool) -> BackupReport:
    if _same_file(source, target):
        raise BackupError(f"{source} is the live database itself; nothing to restore")
    source_revision = _check_sqlite_backup(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive_data_dir_lock(target.parent):
        if target.exists() and not force:
            _refuse_occupied(str(target), _sqlite_occupants(target))
        restoring = _sibling(target, ".restoring")
        with _removed_on_failure(restoring):
            try:
                src = _connect(source, "ro")
                try:
                    dst = sqlite3.connect(restoring, isolation_level=None)
                    try:
                        src.backup(dst)
                        dst.execute("PRAGMA journal_mode=DELETE").fetchone()
                    finally:
                        dst.close()
                finally:
                    src.close()
                _fsync_file(restoring)
                # The old file's WAL or hot journal would be replayed into the new file.
                for sidecar in _sidecars(target):
                    sidecar.unlink(missing_ok=True)
                os.replace(restoring, target)
                _fsync_dir(target.parent)
            except (sqlite3.DatabaseError, OSError) as exc:
                raise BackupError(f"could not restore {source} into {target}: {exc}") from exc
        _upgrade(database_url, str(target))
        conn = _connect(target, "rw")
        try:
            revision, counts = _sqlite_summary(conn)
        finally:
            conn.close()
    return _restore_report(source, source_revision, revision, counts)


def _upgrade(database_url: str, shown: str) -> None:
    from app.db import migrate

    try:
        migrate.upgrade(database_url)
    except Exception as exc:
        raise BackupError(
            f"restored {shown}, but bringing its schema up to date failed: {exc}; "
            "fix the cause and run `graft migrate`"
        ) from exc


def _restore_report(
    source: Path, source_revision: str | None, revision: str | None, counts: dict[str, int]
) -> BackupReport:
    return BackupReport(
        path=source,
        size_bytes=source.stat().st_size,
        sha256=_sha256(source),
        revision=revision,
        datasets=counts["datasets"],
        registered_models=counts["registered_models"],
        model_versions=counts["model_versions"],
        jobs=counts["jobs"],
        source_revision=source_revision,
    )


# --- PostgreSQL -------------------------------------------------------------------------


def _libpq(database_url: str) -> tuple[str, dict[str, str]]:
    """A libpq URL for the PostgreSQL tools and their environment; the password travels in
    PGPASSWORD so that it never shows on a command line (`ps`)."""
    url = make_url(database_url)
    env = dict(os.environ)
    if url.password is not None:
        env["PGPASSWORD"] = str(url.password)
    libpq = url._replace(password=None).set(drivername="postgresql")
    return libpq.render_as_string(hide_password=False), env


def _require_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise BackupError(
            f"{name} is not on PATH; install the PostgreSQL client tools (e.g. `apt install "
            "postgresql-client`, the server's major version or newer) to back up or restore "
            "a PostgreSQL database"
        )
    return path


def _run_tool(argv: list[str], env: dict[str, str]) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = result.stderr.strip() or result.stdout.strip() or "no output"
        raise BackupError(f"{Path(argv[0]).name} failed (exit {result.returncode}): {detail}")
    return result.stdout


def _postgres_summary(conn: Connection) -> tuple[str | None, dict[str, int]]:
    tables = set(inspect(conn).get_table_names())
    revision = None
    if "alembic_version" in tables:
        revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    counts = {
        table: int(conn.execute(text(f'SELECT count(*) FROM "{table}"')).scalar() or 0)
        if table in tables
        else 0
        for table in _COUNTED_TABLES
    }
    return revision, counts


def _backup_postgres(database_url: str, destination: Path, force: bool) -> BackupReport:
    from app.db.session import make_engine

    _check_destination(destination, force, None)
    pg_dump = _require_tool("pg_dump")
    libpq, env = _libpq(database_url)
    partial = _sibling(destination, ".partial")
    engine = make_engine(database_url)
    try:
        with _removed_on_failure(partial):
            with engine.connect() as conn:
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
                with conn.begin():
                    # pg_dump reads the very snapshot the counts come from, so the report
                    # describes exactly what the file holds.
                    snapshot = conn.execute(text("SELECT pg_export_snapshot()")).scalar()
                    revision, counts = _postgres_summary(conn)
                    if revision is None:
                        raise BackupError(
                            "the database is not a Graft database (no alembic_version "
                            "table); run `graft migrate` first"
                        )
                    _run_tool(
                        [
                            pg_dump,
                            "--format=custom",
                            f"--snapshot={snapshot}",
                            "--file",
                            str(partial),
                            libpq,
                        ],
                        env,
                    )
            return _finish(partial, destination, revision, counts)
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"could not back up the PostgreSQL database: {exc}") from exc
    finally:
        engine.dispose()


def _restore_postgres(source: Path, database_url: str, force: bool) -> BackupReport:
    from app.db.session import make_engine

    _check_source_file(source)
    kind = _file_kind(source)
    if kind == "sqlite":
        raise BackupError(
            f"{source} is a SQLite backup; restore it into a SQLite database "
            "(unset GRAFT_DATABASE_URL)"
        )
    if kind != "pg_dump":
        raise BackupError(f"{source} is not a Graft backup (not a pg_dump custom archive)")
    pg_restore = _require_tool("pg_restore")
    libpq, env = _libpq(database_url)
    listing = _run_tool([pg_restore, "--list", str(source)], env)
    if not re.search(r"\bTABLE\b.*\balembic_version\b", listing):
        raise BackupError(f"{source} is not a Graft backup (no alembic_version table)")
    shown = make_url(database_url).render_as_string(hide_password=True)
    engine = make_engine(database_url)
    try:
        if not force:
            with engine.connect() as conn:
                _refuse_occupied(shown, _postgres_summary(conn)[1])
        engine.dispose()  # our own idle connection must not hold locks the restore needs
        # One transaction: a restore that fails half-way leaves the database as it was.
        _run_tool(
            [
                pg_restore,
                "--clean",
                "--if-exists",
                "--no-owner",
                "--no-acl",
                "--single-transaction",
                "--dbname",
                libpq,
                str(source),
            ],
            env,
        )
        with engine.connect() as conn:
            source_revision, _ = _postgres_summary(conn)
        engine.dispose()
        _upgrade(database_url, shown)
        with engine.connect() as conn:
            revision, counts = _postgres_summary(conn)
    except BackupError:
        raise
    except Exception as exc:
        raise BackupError(f"could not restore {source} into {shown}: {exc}") from exc
    finally:
        engine.dispose()
    return _restore_report(source, source_revision, revision, counts)


# --- entry points -----------------------------------------------------------------------


def backup(
    database_url: str,
    destination: Path,
    *,
    force: bool = False,
    pages: int = 256,
    progress: Progress | None = None,
) -> BackupReport:
    """Write a consistent copy of the database at `database_url` to `destination`.

    Safe while Graft runs. SQLite: the online backup API, `pages` per step (`progress` gets
    pages remaining and total after each); PostgreSQL: `pg_dump --format=custom`."""
    destination = Path(destination)
    if _backend(database_url) == "postgresql":
        return _backup_postgres(database_url, destination, force)
    source = sqlite_file(database_url)
    assert source is not None
    return _backup_sqlite(source, destination, force, pages, progress)


def restore(source: Path, database_url: str, *, force: bool = False) -> BackupReport:
    """Replace the database at `database_url` with the backup `source`, then migrate it to
    the newest schema. Refuses a non-empty database unless `force`, and (SQLite) a data
    folder that a running Graft process holds."""
    source = Path(source)
    if _backend(database_url) == "postgresql":
        return _restore_postgres(source, database_url, force)
    target = sqlite_file(database_url)
    assert target is not None
    return _restore_sqlite(source, target, database_url, force)
