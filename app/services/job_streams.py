"""Live job events as Server-Sent Events, with one shared poller per watched job.

However many clients watch a job, the API process reads that job's new events once per
poll period, in a short read-only transaction on a worker thread, and fans them out to
every watcher. A watcher first catches up on its own (events after its `Last-Event-ID`),
then follows the shared feed; seq numbers are gap-free per job, so a gap between what a
watcher has sent and what the feed delivers is filled by one more catch-up read.
"""

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from sqlalchemy import select

from app.db.models import Job, JobEvent
from app.db.session import Database
from app.enums import EventType, JobStatus
from app.schemas.jobs import EventRead

log = logging.getLogger(__name__)

_PAGE = 500
_FINAL = {JobStatus.SUCCEEDED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value}


@dataclass(frozen=True)
class StreamedEvent:
    seq: int
    type: str
    payload: dict[str, Any]

    @property
    def is_final(self) -> bool:
        """The status event that ends the job, and with it the stream."""
        data = self.payload.get("data") or {}
        return self.type == EventType.STATUS and data.get("status") in _FINAL

    def to_sse(self) -> str:
        data = json.dumps(self.payload, separators=(",", ":"))
        return f"id: {self.seq}\nevent: {self.type}\ndata: {data}\n\n"


def _read_after(db: Database, job_id: str, after: int) -> tuple[list[StreamedEvent], bool]:
    """Events after `after` (one page), and whether the job has ended."""
    with db.read_scope() as session:
        rows = session.scalars(
            select(JobEvent)
            .where(JobEvent.job_id == job_id, JobEvent.seq > after)
            .order_by(JobEvent.seq)
            .limit(_PAGE)
        ).all()
        status = session.scalar(select(Job.status).where(Job.id == job_id))
    events = [
        StreamedEvent(row.seq, row.type, EventRead.model_validate(row).model_dump(mode="json"))
        for row in rows
    ]
    return events, status is None or JobStatus(status).is_final


def _last_seq(db: Database, job_id: str) -> int:
    with db.read_scope() as session:
        next_seq = session.scalar(select(Job.next_event_seq).where(Job.id == job_id))
    return 0 if next_seq is None else next_seq - 1


@dataclass
class _Watch:
    """The shared feed of one job: a poll loop and the queues of its watchers."""

    job_id: str
    subscribers: set[asyncio.Queue[StreamedEvent]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class JobEventHub:
    def __init__(self, db: Database, *, poll_seconds: float, keepalive_seconds: float) -> None:
        self._db = db
        self._poll_seconds = poll_seconds
        self._keepalive_seconds = keepalive_seconds
        self._watches: dict[str, _Watch] = {}

    def watched_jobs(self) -> int:
        return len(self._watches)

    def watchers(self) -> int:
        return sum(len(watch.subscribers) for watch in self._watches.values())

    async def _poll(self, watch: _Watch) -> None:
        last = await anyio.to_thread.run_sync(_last_seq, self._db, watch.job_id)
        while watch.subscribers:
            await asyncio.sleep(self._poll_seconds)
            try:
                events, _ = await anyio.to_thread.run_sync(
                    _read_after, self._db, watch.job_id, last
                )
            except Exception:  # a failed read is retried at the next poll
                log.exception("reading events of job %s failed", watch.job_id)
                continue
            for event in events:
                for subscriber in watch.subscribers:
                    subscriber.put_nowait(event)
            if events:
                last = events[-1].seq

    def _subscribe(self, job_id: str) -> tuple[_Watch, asyncio.Queue[StreamedEvent]]:
        watch = self._watches.get(job_id)
        if watch is None:
            watch = self._watches[job_id] = _Watch(job_id)
            watch.task = asyncio.create_task(self._poll(watch), name=f"events-{job_id}")
        subscriber: asyncio.Queue[StreamedEvent] = asyncio.Queue()
        watch.subscribers.add(subscriber)
        return watch, subscriber

    def _unsubscribe(self, watch: _Watch, subscriber: asyncio.Queue[StreamedEvent]) -> None:
        watch.subscribers.discard(subscriber)
        if not watch.subscribers and self._watches.get(watch.job_id) is watch:
            del self._watches[watch.job_id]
            if watch.task is not None:
                watch.task.cancel()

    async def _catch_up(self, job_id: str, after: int) -> tuple[list[StreamedEvent], bool]:
        """Every event after `after`, page by page, and whether the job had ended."""
        caught: list[StreamedEvent] = []
        while True:
            events, ended = await anyio.to_thread.run_sync(_read_after, self._db, job_id, after)
            caught.extend(events)
            if len(events) < _PAGE:
                return caught, ended
            after = events[-1].seq

    async def stream(self, job_id: str, after: int) -> AsyncIterator[str]:
        """SSE text for the job's events after seq `after`, ending with its final status."""
        # Subscribe before catching up, so nothing written in between is missed.
        watch, subscriber = self._subscribe(job_id)
        try:
            yield "retry: 2000\n\n"
            cursor = after
            backlog, ended = await self._catch_up(job_id, cursor)
            for event in backlog:
                yield event.to_sse()
                cursor = event.seq
                if event.is_final:
                    return
            if ended:  # the client had already seen the final event
                return
            while True:
                try:
                    event = await asyncio.wait_for(subscriber.get(), self._keepalive_seconds)
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    continue
                if event.seq <= cursor:
                    continue
                batch = [event]
                if event.seq > cursor + 1:
                    batch, _ = await self._catch_up(job_id, cursor)
                for item in batch:
                    yield item.to_sse()
                    cursor = item.seq
                    if item.is_final:
                        return
        finally:
            self._unsubscribe(watch, subscriber)

    async def close(self) -> None:
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
