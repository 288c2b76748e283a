"""Change signals between processes (app/db/changes.py) on PostgreSQL: a NOTIFY counts as a
change from the moment it reaches the listening connection, before the listener thread has
read it."""

import threading
import time
from typing import Any

from sqlalchemy import create_engine, text

from app.db.changes import KEYS, ChangeWatcher


class UnreadListener(ChangeWatcher):
    """A watcher whose listener thread never gets to read: the notification stays waiting
    on its connection (as when that thread has not been scheduled yet)."""

    def _receive(self, connection: Any) -> None:
        self.listening.set()
        self._closing.wait()

    def __init__(self, database_url: str, topic: str) -> None:
        self.listening = threading.Event()
        super().__init__(database_url, topic)


def notify(url: str, topic: str) -> None:
    engine = create_engine(url, isolation_level="AUTOCOMMIT", pool_size=1)
    with engine.connect() as connection:
        connection.execute(text(f"NOTIFY graft_{topic}"))
    engine.dispose()


def test_a_waiting_notification_counts_before_the_listener_reads_it(postgres_url: str) -> None:
    watcher = UnreadListener(postgres_url, KEYS)
    try:
        assert watcher.listening.wait(10)
        watcher.acknowledge()
        assert not watcher.changed()
        notify(postgres_url, KEYS)
        deadline = time.monotonic() + 5
        while not watcher.changed():
            assert time.monotonic() < deadline, "the notification never counted"
            time.sleep(0.001)
    finally:
        watcher.close()


def test_other_topics_and_quiet_connections_are_no_change(postgres_url: str) -> None:
    watcher = ChangeWatcher(postgres_url, KEYS)
    try:
        deadline = time.monotonic() + 10
        while watcher._listening_fd is None:
            assert time.monotonic() < deadline, "the listener never listened"
            time.sleep(0.01)
        watcher.acknowledge()
        notify(postgres_url, "registry")
        time.sleep(0.2)
        assert not watcher.changed()
    finally:
        watcher.close()
