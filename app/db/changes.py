"""Change signals: a commit in one process tells every process's in-memory views to reload.

API processes keep some tables in memory (the API keys, the registry's alias and default
resolution), so that a request reads no database. A transaction that changes such a table
calls `mark(session, topic)`; once it commits, every process's `ChangeWatcher` for that topic
reports a change before that process's next request, and the view reloads.

How a change travels:
- On one machine (SQLite always; PostgreSQL inside one `graft serve --processes N`), the
  committing process writes a new value into an 8-byte counter file, which every process has
  memory-mapped: checking for a change costs an 8-byte compare and no system call, and a
  change is seen by the very next request, in any process.
- PostgreSQL also sends `NOTIFY graft_<topic>` in the writer's transaction; a listener thread
  in each process receives it, so replicas on other machines (and Celery workers' version
  registrations) reach them too. PostgreSQL sends the notification to the listening
  connection at commit, but the thread that reads it may not have run yet when the next
  request comes (a revoked key's next request, sent to another instance the moment the
  revocation returned): so each check also asks the kernel whether that connection has
  something waiting to be read, and counts that as a change.
"""

import logging
import mmap
import os
import select
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from sqlalchemy import event, make_url, text
from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

KEYS = "keys"
REGISTRY = "registry"
TOPICS = (KEYS, REGISTRY)
# Set by `graft serve --processes N` for its API and worker processes: a folder of theirs.
RUNTIME_DIR_ENV = "GRAFT_RUNTIME_DIR"
_PENDING = "graft_changed_topics"
# This process's watchers: told at once, whatever the database (SQLite in memory included).
_watchers: "weakref.WeakSet[ChangeWatcher]" = weakref.WeakSet()


def mark(session: Session, topic: str) -> None:
    """This transaction changes `topic`: announce it to every process once it commits."""
    if topic not in TOPICS:
        raise ValueError(f"unknown change topic {topic!r}")
    session.info.setdefault(_PENDING, set()).add(topic)
    if session.get_bind().dialect.name == "postgresql":
        # Delivered by PostgreSQL at commit, and only if the transaction commits.
        session.execute(text(f"NOTIFY graft_{topic}"))


@event.listens_for(Session, "after_commit")
def _announce_after_commit(session: Session) -> None:
    topics = session.info.pop(_PENDING, None)
    if not topics:
        return
    for watcher in list(_watchers):
        if watcher.topic in topics:
            watcher.invalidate()
    bind = session.get_bind()
    url = str(bind.engine.url)
    for topic in topics:
        for path in counter_paths(url, topic):
            bump_counter(path)


@event.listens_for(Session, "after_soft_rollback")
def _forget_after_rollback(session: Session, _previous_transaction: Any) -> None:
    session.info.pop(_PENDING, None)


def announce(database_url: str, topic: str) -> None:
    """Announce a change committed outside a marked session (on this machine only)."""
    for watcher in list(_watchers):
        if watcher.topic == topic:
            watcher.invalidate()
    for path in counter_paths(database_url, topic):
        bump_counter(path)


def counter_paths(database_url: str, topic: str) -> list[Path]:
    """The counter files that processes on this machine watch for `topic`."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if not url.database or url.database == ":memory:":
            return []
        database = Path(url.database)
        return [database.with_name(f"{database.name}.{topic}-changed")]
    runtime = os.environ.get(RUNTIME_DIR_ENV)
    return [Path(runtime) / f"{topic}-changed"] if runtime else []


class ChangeWatcher:
    """Whether `topic` changed since this process last `acknowledge`d it.

    `changed()` is meant for every request: on a counter file it compares 8 bytes of a
    memory map; the PostgreSQL listener only sets a flag. Acknowledge *before* reloading, so
    a change committed while the reload reads is reported again.
    """

    def __init__(self, database_url: str, topic: str) -> None:
        self.topic = topic
        self._counters = [c for c in map(map_counter, counter_paths(database_url, topic)) if c]
        self._seen = [b""] * len(self._counters)
        # Set by the listener thread (or `invalidate`); a plain attribute, read per request.
        self._stale = True
        # The listener's connection, while it listens (PostgreSQL only).
        self._listening_fd: int | None = None
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None
        if make_url(database_url).get_backend_name() == "postgresql":
            self._listener = threading.Thread(
                target=self._listen, args=(database_url,), name=f"changes-{topic}", daemon=True
            )
            self._listener.start()
        _watchers.add(self)

    def changed(self) -> bool:
        if self._stale:
            return True
        for counter, seen in zip(self._counters, self._seen, strict=True):
            if counter[:8] != seen:
                return True
        fd = self._listening_fd
        return fd is not None and _has_input(fd)

    def acknowledge(self) -> None:
        self._stale = False
        self._seen = [counter[:8] for counter in self._counters]

    def invalidate(self) -> None:
        """Report a change at the next check (a reload failed; retry it)."""
        self._stale = True

    def close(self) -> None:
        self._closing.set()

    def _listen(self, database_url: str) -> None:
        import psycopg

        url = make_url(database_url).set(drivername="postgresql")
        dsn = url.render_as_string(hide_password=False)
        while not self._closing.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True) as connection:
                    connection.execute(f"LISTEN graft_{self.topic}")
                    # Anything may have changed while not listening.
                    self._stale = True
                    self._listening_fd = connection.fileno()
                    try:
                        self._receive(connection)
                    finally:
                        self._listening_fd = None
            except Exception:  # the database went away: retry, and reload once back
                log.warning(
                    "%s change listener lost its connection; retrying", self.topic, exc_info=True
                )
                self._stale = True
                self._closing.wait(1.0)

    def _receive(self, connection: Any) -> None:
        while not self._closing.is_set():
            for _ in connection.notifies(timeout=1.0):
                self._stale = True


def _has_input(fd: int) -> bool:
    """Whether `fd` has bytes waiting to be read: one non-blocking poll (a new poll object
    each time: one object polled from two threads at once raises)."""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    try:
        return bool(poller.poll(0))
    except OSError:  # closed meanwhile: the listener reconnects and reports a change
        return True


def _open_counter(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    if os.fstat(fd).st_size < 8:
        os.ftruncate(fd, 8)
    return fd


def map_counter(path: Path) -> Any:
    """The counter file, mapped (one page cache, so another process's write is in this
    mapping at once). None when it cannot be made (a read-only folder): then changes made
    by other processes are not seen until a restart, which the log says."""
    try:
        fd = _open_counter(path)
    except OSError:
        log.warning("cannot create %s: changes made by other processes will not be seen", path)
        return None
    try:
        return mmap.mmap(fd, 8, access=mmap.ACCESS_READ)
    finally:
        os.close(fd)


def bump_counter(path: Path) -> None:
    # Any new value is a change; the time keeps it unique without reading the old one.
    try:
        fd = _open_counter(path)
    except OSError:
        log.warning("cannot write %s: other processes will not see this change", path)
        return
    try:
        os.pwrite(fd, time.time_ns().to_bytes(8, "little"), 0)
    finally:
        os.close(fd)
