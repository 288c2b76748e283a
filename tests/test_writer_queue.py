"""SQLite writers take turns in the WriterQueue (app/db/session.py), not in SQLite's busy
handler: concurrent writers from threads and processes all commit, and a turn ends however
its transaction ends."""

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from app.db import session as db_session
from app.db.session import Database


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    # A turn that was never given back would fail the next writer within a second.
    monkeypatch.setattr(db_session, "WRITER_TIMEOUT_SECONDS", 1.0)
    db = Database(f"sqlite:///{tmp_path / 'graft.db'}")
    with db.session_scope() as session:
        session.execute(text("CREATE TABLE counted (source TEXT, n INTEGER)"))
    return db


OTHER_PROCESS = """
import sys
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError
from app.db.session import Database
db = Database(sys.argv[1])
for n in range(100):
    with db.session_scope() as session:
        session.execute(text("INSERT INTO counted VALUES ('process', :n)"), {"n": n})
"""


def test_threads_and_another_process_all_commit(database: Database) -> None:
    def writes(name: str) -> None:
        for n in range(50):
            with database.session_scope() as session:
                session.execute(text("INSERT INTO counted VALUES (:s, :n)"), {"s": name, "n": n})

    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, database.url])
    threads = [threading.Thread(target=writes, args=(f"t{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert other.wait(timeout=120) == 0
    with database.read_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM counted")) == 8 * 50 + 100


def test_a_turn_ends_with_a_rollback_an_error_or_a_closed_session(database: Database) -> None:
    with pytest.raises(RuntimeError), database.session_scope() as session:
        session.execute(text("INSERT INTO counted VALUES ('x', 1)"))
        raise RuntimeError("the route failed")
    with database.sessions() as session:
        session.execute(text("INSERT INTO counted VALUES ('y', 1)"))
        session.rollback()
    with database.sessions() as session:
        session.execute(text("INSERT INTO counted VALUES ('z', 1)"))
        # closed without commit or rollback
    with database.session_scope() as session:
        session.execute(text("INSERT INTO counted VALUES ('w', 1)"))
    with database.read_scope() as session:
        assert session.scalar(text("SELECT group_concat(source) FROM counted")) == "w"


def test_a_failed_commit_leaves_no_transaction_open_on_the_connection(
    database: Database,
) -> None:
    """SQLite keeps a transaction open when its COMMIT fails (here a deferred foreign key),
    and SQLAlchemy, counting it as ended, does not roll it back: the pool must, or every
    later BEGIN on that connection fails ("cannot start a transaction within a transaction")."""
    with database.session_scope() as session:
        session.execute(text("CREATE TABLE parent (id TEXT PRIMARY KEY)"))
        session.execute(
            text(
                "CREATE TABLE child (parent_id TEXT REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    with pytest.raises(IntegrityError), database.session_scope() as session:
        session.execute(text("INSERT INTO child VALUES ('nobody')"))
    for n in range(3):  # whichever connection of the pool comes next
        with database.session_scope() as session:
            session.execute(text("INSERT INTO counted VALUES ('after', :n)"), {"n": n})
    with database.read_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM child")) == 0


def test_readers_do_not_wait_for_a_writer(database: Database) -> None:
    with database.session_scope() as writer:
        writer.execute(text("INSERT INTO counted VALUES ('open', 1)"))
        with database.read_scope() as reader:
            assert reader.scalar(text("SELECT count(*) FROM counted")) == 0


HOLD_FILE_LOCK = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_writer_lock(database: Database, seconds: float) -> subprocess.Popen[str]:
    """Another process taking its writer's turn (the file lock) for `seconds`."""
    path = db_session._sqlite_path(database.url)
    assert path is not None
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FILE_LOCK, f"{path}.writer", str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    return holder


def test_a_writer_goes_as_soon_as_another_process_ends_its_turn(database: Database) -> None:
    holder = hold_writer_lock(database, 0.3)
    with database.session_scope() as session:
        session.execute(text("INSERT INTO counted VALUES ('after', 1)"))
    assert holder.wait(timeout=10) == 0


def test_a_writer_that_gave_up_leaves_the_turn_to_the_next(database: Database) -> None:
    """Timed out while another process held its turn: the next writer still gets one, and
    the turn the helper thread took late is not kept from other processes."""
    holder = hold_writer_lock(database, 1.5)
    with (
        pytest.raises(sqlite3.OperationalError, match="another process"),
        database.session_scope() as session,
    ):
        session.execute(text("INSERT INTO counted VALUES ('late', 1)"))
    assert holder.wait(timeout=10) == 0
    with database.session_scope() as session:
        session.execute(text("INSERT INTO counted VALUES ('next', 1)"))
    # And the lock file is free again for another process (nothing held it on).
    hold_writer_lock(database, 0).wait(timeout=10)
    with database.read_scope() as session:
        assert session.scalar(text("SELECT group_concat(source) FROM counted")) == "next"
