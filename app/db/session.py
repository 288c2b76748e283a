"""Engine and session factories; the unit-of-work boundary lives with the caller."""

import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

# Imported for its after-commit hook: every committed `changes.mark` is announced.
from app.db import changes  # noqa: F401
from app.db.group_commit import GroupCommit, GroupWriter

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")


# Connections a process keeps open, and how many more it may open for a burst (closed again
# when handed back). SQLAlchemy's default of 5 kept open was below what an API process
# uses at once with 16 clients submitting (a read session per draft beside each group's
# write): every burst opened and closed connections, on PostgreSQL a backend each.
POOL_SIZE = 20
POOL_OVERFLOW = 10


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, a busy timeout, foreign keys and IMMEDIATE writes."""
    options: dict[str, Any] = {"pool_size": POOL_SIZE, "max_overflow": POOL_OVERFLOW, **kwargs}
    if not url.startswith("sqlite"):
        return create_engine(url, pool_pre_ping=True, **options)
    if _sqlite_path(url) is None:
        # An in-memory database lives in one connection per thread: no pool to size.
        options = kwargs
    engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **options)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see _on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        # FULL syncs the WAL on every commit: a write acknowledged with a 2xx survives a
        # power cut too, not only a crash of the process (NORMAL may lose the last ones).
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.close()

    writers = WriterQueue(_sqlite_path(url))

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A deferred transaction that reads and then writes cannot wait for a
        # busy lock in WAL mode (SQLITE_BUSY_SNAPSHOT fails at once), so writers
        # take the write lock up front; read-only sessions ask for DEFERRED.
        mode = connection.get_execution_options().get("sqlite_begin", "IMMEDIATE")
        if mode == "IMMEDIATE":
            writers.acquire()
            connection.info[_HOLDS_WRITER] = True
        try:
            connection.exec_driver_sql(f"BEGIN {mode}")
        except BaseException:
            _release(connection)
            raise

    def _release(connection: Any, *_: Any) -> None:
        if connection.info.pop(_HOLDS_WRITER, False):
            writers.release()

    event.listen(engine, "commit", _release)
    event.listen(engine, "rollback", _release)

    @event.listens_for(engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        # A connection handed back mid-transaction (its session closed without commit or
        # rollback) is rolled back by the pool; the writer's turn ends with it. Not after a
        # COMMIT that failed (a deferred constraint, a full disk): SQLite keeps that
        # transaction open, SQLAlchemy counts it as ended and does not roll it back, and
        # every later BEGIN on this connection would fail.
        if dbapi_connection is not None and dbapi_connection.in_transaction:
            dbapi_connection.rollback()
        if record.info.pop(_HOLDS_WRITER, False):
            writers.release()

    return engine


_HOLDS_WRITER = "graft_holds_writer"
# What SQLite's own busy timeout is set to: a writer waits this long for its turn.
WRITER_TIMEOUT_SECONDS = 30.0


class WriterQueue:
    """SQLite writers take turns here before `BEGIN IMMEDIATE`, not in SQLite's busy handler.

    A writer that finds SQLite's write lock taken sleeps in the busy handler in steps of up
    to 100 ms and retries, so under concurrent writes the lock sits idle between turns and
    the last writer in waits longest (1.5 s p99 for 16 clients submitting jobs). Here a
    writer waits on a thread lock (the threads of this process), then for an exclusive
    `flock` of `<database>.writer` (the other processes: API processes, workers, the CLI),
    and goes the moment the previous writer commits or rolls back.

    The kernel hands a released `flock` to a blocked waiter at once, but a blocking call
    cannot time out. So when the file lock is taken, one helper thread per process blocks
    on it and passes it to the writer waiting (with a timeout) on a condition; a writer that
    gave up leaves the helper to release what it gets. Polling instead (sleep, retry) left
    the lock idle between turns for the length of a sleep: 40 % of the CPU idle at 16
    clients across two API processes.
    """

    def __init__(self, database: Path | None) -> None:
        self._threads = threading.Lock()
        self._fd: int | None = None
        if database is not None and sys.platform != "win32":
            try:
                self._fd = os.open(
                    database.with_name(database.name + ".writer"), os.O_RDWR | os.O_CREAT, 0o644
                )
            except OSError:  # a read-only folder: SQLite's own locking still holds
                self._fd = None
        self._turn = threading.Condition()
        self._wanted = False  # a writer of this process waits for the file lock
        self._held = False  # this process holds the file lock for a writer
        self._helper_blocked = False  # the helper is inside a blocking flock
        self._helper: threading.Thread | None = None

    def acquire(self) -> None:
        deadline = time.monotonic() + WRITER_TIMEOUT_SECONDS
        if not self._threads.acquire(timeout=WRITER_TIMEOUT_SECONDS):
            raise sqlite3.OperationalError("database is locked (waited for this process's writer)")
        if self._fd is None:
            return
        import fcntl

        with self._turn:
            if not self._helper_blocked:
                try:
                    fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self._held = True
                    return
                except BlockingIOError:
                    pass
            self._wanted = True
            self._start_helper()
            self._turn.notify_all()
            got = self._turn.wait_for(lambda: self._held, timeout=deadline - time.monotonic())
            self._wanted = False
        if got:
            return
        self._threads.release()
        raise sqlite3.OperationalError("database is locked (waited for another process's writer)")

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            with self._turn:
                self._held = False
                fcntl.flock(self._fd, fcntl.LOCK_UN)
        self._threads.release()

    def _start_helper(self) -> None:
        if self._helper is None or not self._helper.is_alive():
            self._helper = threading.Thread(
                target=self._wait_for_file_lock, name="graft-sqlite-writer", daemon=True
            )
            self._helper.start()

    def _wait_for_file_lock(self) -> None:
        import fcntl

        assert self._fd is not None
        while True:
            with self._turn:
                self._turn.wait_for(lambda: self._wanted and not self._held)
                self._helper_blocked = True
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            finally:
                with self._turn:
                    self._helper_blocked = False
                    if self._wanted and not self._held:
                        self._held = True
                        self._turn.notify_all()
                    else:  # the writer gave up meanwhile
                        fcntl.flock(self._fd, fcntl.LOCK_UN)


def _sqlite_path(url: str) -> Path | None:
    from sqlalchemy import make_url

    database = make_url(url).database
    if not database or database == ":memory:":
        return None
    return Path(database)


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


class Database:
    """The engine plus a writer and a reader session factory."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        reader = self.engine.execution_options(sqlite_begin="DEFERRED")
        self.read_sessions = sessionmaker(reader, expire_on_commit=False)
        self._group_commits: dict[Any, GroupCommit[Any, Any]] = {}
        self._group_commits_lock = threading.Lock()

    def group_commit(self, write: GroupWriter[ItemT, ResultT]) -> GroupCommit[ItemT, ResultT]:
        """The one committer of this process that groups concurrent calls of `write`."""
        with self._group_commits_lock:
            committer = self._group_commits.get(write)
            if committer is None:
                committer = self._group_commits[write] = GroupCommit(self, write)
            return committer

    @contextmanager
    def session_scope(self) -> Iterator[Session]:
        """One unit of work: commit on success, roll back on any error."""
        with self.sessions() as session:
            try:
                yield session
            except BaseException:
                session.rollback()
                raise
            else:
                session.commit()

    @contextmanager
    def read_scope(self) -> Iterator[Session]:
        with self.read_sessions() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()
