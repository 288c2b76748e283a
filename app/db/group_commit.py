"""Group commit: writes that arrive while another is being written share the next transaction.

A job submission's write is small (a few indexed reads, two inserts), so its cost is mostly
the transaction around it: on SQLite the writer's turn (`WriterQueue`), `BEGIN IMMEDIATE`
and an fsync at commit; on PostgreSQL a commit's WAL flush and round trips. With many
clients submitting at once, those turns queue up one behind the other. Here the first
caller to arrive becomes the leader: it opens the transaction (waiting for the writer's
turn, as any writer does), takes every item queued by then, including those that arrived
while it waited, writes them all and commits once. The callers it carried get their answers
only after that commit, so a 2xx still means committed. Whoever arrived meanwhile waits for
the leader to finish and the first of them leads the next group.

Isolation between the items of one group: the writer returns, per item, either its result
or the exception that item's caller should see (a quota refused, a row gone): such an item
wrote nothing, and the others go on. Any other error (a constraint no check foresaw, a lost
connection) rolls the group back and each item is written again alone, in a transaction of
its own, so one bad item costs the others only time. If the commit itself fails, every
caller of the group gets that error: none of their writes is kept.
"""

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

from sqlalchemy.orm import Session

if TYPE_CHECKING:
    from app.db.session import Database

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# Per item: its result, or the exception to raise in its caller's thread (nothing written).
GroupWriter = Callable[[Session, Sequence[ItemT]], list[ResultT | Exception]]

# A group this large already amortises its transaction; a bound keeps one commit short.
MAX_GROUP = 64


@dataclass(eq=False)
class _Caller(Generic[ItemT, ResultT]):
    item: ItemT
    woken: threading.Event = field(default_factory=threading.Event)
    leads: bool = False
    result: "ResultT | None" = None
    error: BaseException | None = None

    def answer(self, outcome: "ResultT | BaseException") -> None:
        if isinstance(outcome, BaseException):
            self.error = outcome
        else:
            self.result = outcome
        self.woken.set()

    def outcome(self) -> ResultT:
        if self.error is not None:
            raise self.error
        return self.result  # type: ignore[return-value]


class GroupCommit(Generic[ItemT, ResultT]):
    """`committer(item)` writes `item` with `write`, committed when it returns; items of
    concurrent callers share a transaction (see the module docstring)."""

    def __init__(
        self,
        database: "Database",
        write: "GroupWriter[ItemT, ResultT]",
        max_group: int = MAX_GROUP,
    ) -> None:
        self._database = database
        self._write = write
        self._max_group = max_group
        self._mutex = threading.Lock()
        self._waiting: list[_Caller[ItemT, ResultT]] = []
        self._leading = False
        # Transactions committed and items carried: the groups' sizes, for tests and metrics.
        self.groups = 0
        self.items = 0

    @property
    def waiting(self) -> int:
        """Callers queued for the next group (the leader's group taken out)."""
        with self._mutex:
            return len(self._waiting)

    def __call__(self, item: ItemT) -> ResultT:
        caller: _Caller[ItemT, ResultT] = _Caller(item)
        with self._mutex:
            self._waiting.append(caller)
            leads = not self._leading
            self._leading = True
        if not leads:
            caller.woken.wait()
            if not caller.leads:
                return caller.outcome()
        try:
            self._write_group(caller)
        finally:
            self._pass_the_lead()
        return caller.outcome()

    def _take(self) -> list[_Caller[ItemT, ResultT]]:
        with self._mutex:
            group = self._waiting[: self._max_group]
            del self._waiting[: self._max_group]
        return group

    def _pass_the_lead(self) -> None:
        with self._mutex:
            if self._waiting:
                successor = self._waiting[0]
                successor.leads = True
                successor.woken.set()
            else:
                self._leading = False

    def _write_group(self, leader: _Caller[ItemT, ResultT]) -> None:
        group: list[_Caller[ItemT, ResultT]] = []
        outcomes: list[ResultT | Exception] | None = None
        try:
            with self._database.sessions() as session:
                # The transaction begins here: on SQLite this waits for the writer's turn,
                # and whoever queued meanwhile joins this group.
                session.connection()
                group = self._take()
                try:
                    outcomes = self._write(session, [caller.item for caller in group])
                    if len(outcomes) != len(group):
                        raise RuntimeError("a group writer answered for the wrong number of items")
                except Exception:
                    session.rollback()
                    outcomes = None
                else:
                    session.commit()
        except BaseException as exc:
            # No transaction, or its commit failed: nothing of this group was kept.
            if not group:
                group = self._take_own(leader)
            for caller in group:
                caller.answer(exc)
            if not isinstance(exc, Exception):
                raise
            return
        if outcomes is None:
            for caller in group:
                self._write_alone(caller)
            return
        with self._mutex:
            self.groups += 1
            self.items += len(group)
        for caller, outcome in zip(group, outcomes, strict=True):
            caller.answer(outcome)

    def _take_own(self, leader: _Caller[ItemT, ResultT]) -> list[_Caller[ItemT, ResultT]]:
        with self._mutex:
            if leader in self._waiting:
                self._waiting.remove(leader)
        return [leader]

    def _write_alone(self, caller: _Caller[ItemT, ResultT]) -> None:
        try:
            with self._database.session_scope() as session:
                (outcome,) = self._write(session, [caller.item])
                if isinstance(outcome, Exception):
                    # Refused: nothing was written, so the rollback loses nothing.
                    raise outcome
        except Exception as exc:
            caller.answer(exc)
            return
        with self._mutex:
            self.groups += 1
            self.items += 1
        caller.answer(outcome)
