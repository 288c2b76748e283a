"""Group commit (app/db/group_commit.py): callers that arrive while a group is being written
share the next transaction; each gets its answer only once its write is committed, and one
caller's bad item costs the others nothing but time."""

import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db.group_commit import GroupCommit
from app.db.session import Database


class Refused(Exception):
    pass


@pytest.fixture
def database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'graft.db'}")
    with db.session_scope() as session:
        session.execute(text("CREATE TABLE parent (id TEXT PRIMARY KEY)"))
        session.execute(
            text(
                "CREATE TABLE child (id TEXT PRIMARY KEY, parent_id TEXT REFERENCES parent(id) "
                "DEFERRABLE INITIALLY DEFERRED)"
            )
        )
    return db


def other_process_view(database: Database) -> Database:
    """A second engine on the same file: it sees only what was committed."""
    return Database(database.url)


def parents(database: Database) -> set[str]:
    with database.read_scope() as session:
        return set(session.scalars(text("SELECT id FROM parent")))


def insert_parents(session: Session, items: Sequence[str]) -> list[str | Exception]:
    """Writes each item as a parent row; an item starting with "refuse" is refused (and
    writes nothing), "orphan:<id>" writes a child whose parent never exists (the deferred
    foreign key fails the commit)."""
    outcomes: list[str | Exception] = []
    rows = []
    for item in items:
        if item.startswith("refuse"):
            outcomes.append(Refused(item))
        elif item.startswith("orphan:"):
            session.execute(text("INSERT INTO child VALUES (:id, 'nobody')"), {"id": item})
            outcomes.append(item)
        else:
            rows.append({"id": item})
            outcomes.append(item)
    if rows:
        session.execute(text("INSERT INTO parent VALUES (:id)"), rows)
    return outcomes


class Gate:
    """Holds the first group's write open until the test has queued the next callers."""

    def __init__(self, write: Any) -> None:
        self.write = write
        self.entered = threading.Event()
        self.open = threading.Event()
        self.groups: list[list[str]] = []

    def __call__(self, session: Session, items: Sequence[str]) -> list[str | Exception]:
        self.groups.append(list(items))
        if len(self.groups) == 1:
            self.entered.set()
            assert self.open.wait(10)
        result: list[str | Exception] = self.write(session, items)
        return result


def run_grouped(
    committer: GroupCommit[str, str], gate: Gate, first: str, then: list[str]
) -> dict[str, Any]:
    """`first` leads a group alone (held open by the gate); `then` queue meanwhile and are
    written together in the next group. Returns each item's result or exception."""
    answers: dict[str, Any] = {}

    def call(item: str) -> None:
        try:
            answers[item] = committer(item)
        except Exception as exc:
            answers[item] = exc

    threads = [threading.Thread(target=call, args=(first,))]
    threads[0].start()
    assert gate.entered.wait(10)
    deadline = time.monotonic() + 10
    for queued, item in enumerate(then, start=1):
        threads.append(threading.Thread(target=call, args=(item,)))
        threads[-1].start()
        # One at a time, so the group holds them in this order.
        while committer.waiting < queued:
            assert time.monotonic() < deadline, "the callers never queued"
            time.sleep(0.002)
    gate.open.set()
    for thread in threads:
        thread.join(10)
    return answers


def test_concurrent_callers_share_transactions_and_return_once_committed(
    database: Database,
) -> None:
    commits = []
    event.listen(database.engine, "commit", lambda _conn: commits.append(1))

    def slow_insert(session: Session, items: Sequence[str]) -> list[str | Exception]:
        time.sleep(0.002)  # a write long enough for others to queue behind it
        return insert_parents(session, items)

    committer = database.group_commit(slow_insert)
    outside = other_process_view(database)
    not_visible: list[str] = []

    def client(name: str) -> None:
        for n in range(25):
            item = f"{name}-{n}"
            assert committer(item) == item
            if item not in parents(outside):
                not_visible.append(item)

    threads = [threading.Thread(target=client, args=(f"c{i}",)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not_visible == []
    assert len(parents(database)) == 12 * 25
    assert committer.items == 12 * 25
    assert committer.groups == len(commits)
    assert committer.groups < committer.items / 2, "concurrent callers were not grouped"


def test_one_committer_per_writer_and_database(database: Database) -> None:
    assert database.group_commit(insert_parents) is database.group_commit(insert_parents)


def test_a_refused_item_writes_nothing_and_the_rest_of_its_group_commits(
    database: Database,
) -> None:
    gate = Gate(insert_parents)
    committer = database.group_commit(gate)
    answers = run_grouped(committer, gate, "a", ["b", "refuse-c", "d"])
    assert gate.groups[1:] == [["b", "refuse-c", "d"]]
    assert isinstance(answers["refuse-c"], Refused)
    assert {answers["a"], answers["b"], answers["d"]} == {"a", "b", "d"}
    assert parents(other_process_view(database)) == {"a", "b", "d"}
    assert committer.groups == 2


def test_an_unexpected_error_rolls_the_group_back_and_writes_each_alone(
    database: Database,
) -> None:
    with database.session_scope() as session:
        session.execute(text("INSERT INTO parent VALUES ('taken')"))
    gate = Gate(insert_parents)
    committer = database.group_commit(gate)
    # "taken" breaks the primary key: the group's one insert fails for all three.
    answers = run_grouped(committer, gate, "a", ["b", "taken", "d"])
    assert gate.groups[1:] == [["b", "taken", "d"], ["b"], ["taken"], ["d"]]
    assert isinstance(answers["taken"], IntegrityError)
    assert (answers["b"], answers["d"]) == ("b", "d")
    assert parents(other_process_view(database)) == {"a", "b", "d", "taken"}


def test_a_failed_commit_fails_every_caller_of_its_group_and_keeps_nothing(
    database: Database,
) -> None:
    gate = Gate(insert_parents)
    committer = database.group_commit(gate)
    answers = run_grouped(committer, gate, "a", ["b", "orphan:c", "d"])
    assert gate.groups[1:] == [["b", "orphan:c", "d"]]
    for item in ("b", "orphan:c", "d"):
        assert isinstance(answers[item], IntegrityError), answers[item]
    assert answers["a"] == "a"
    assert parents(other_process_view(database)) == {"a"}
    # The writer's turn was given back: the next caller writes at once.
    assert committer("e") == "e"
