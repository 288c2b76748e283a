"""Live job events as Server-Sent Events, with one shared poller per watched job.

However many clients watch a job, the API process reads that job's new events once per
poll period, in a short read-only transaction on a worker thread, and fans them out to
every watcher. A watcher first catches up on its own (events after its `Last-Event-ID`),
then follows the shared feed; seq numbers are gap-free per job, so a gap between what a
watcher has sent and what the feed delivers is filled by one more catch-up read.

No stream holds a database session between reads, and the open streams are bounded: at
most `max_streams` per process and `max_streams_per_key` per API key (streams of requests
without a key, auth being disabled, count only towards the process's bound). A stream takes
its slot before its response starts (`reserve`, 429 too_many_streams beyond a bound) and
gives it back when it ends, however it ends: the job's final event, the client hanging up,
the server shutting down, or a response that never started.
"""

import asyncio
import contextlib
import json
import logging
import threading
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from sqlalchemy import select

from app.db.models import Job, JobEvent
from app.db.session import Database
from app.enums import EventType, JobStatus
from app.errors import TooManyRequests
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


# What a client refused a stream is told to wait: streams end when their jobs do, so a slot
# frees up on its own time; a few seconds keeps a retrying client from spinning.
STREAM_RETRY_AFTER_SECONDS = 5.0


class StreamSlot:
    """One open stream's place under the bounds; `release` gives it back (once)."""

    def __init__(self, hub: "JobEventHub", key_id: str | None) -> None:
        self._hub = hub
        self.key_id = key_id
        self._released = False

    @property
    def released(self) -> bool:
        return self._released

    def release(self) -> None:
        with self._hub._lock:
            if self._released:
                return
            self._released = True
            self._hub._open -= 1
            if self.key_id is not None:
                left = self._hub._open_by_key[self.key_id] - 1
                if left:
                    self._hub._open_by_key[self.key_id] = left
                else:
                    del self._hub._open_by_key[self.key_id]


@dataclass
class _Watch:
    """The shared feed of one job: a poll loop and the queues of its watchers."""

    job_id: str
    subscribers: set[asyncio.Queue[StreamedEvent]] = field(default_factory=set)
    task: asyncio.Task[None] | None = None


class JobEventHub:
    def __init__(
        self,
        db: Database,
        *,
        poll_seconds: float,
        keepalive_seconds: float,
        max_streams: int | None = None,
        max_streams_per_key: int | None = None,
    ) -> None:
        self._db = db
        self._poll_seconds = poll_seconds
        self._keepalive_seconds = keepalive_seconds
        self._watches: dict[str, _Watch] = {}
        self.max_streams = max_streams
        self.max_streams_per_key = max_streams_per_key
        # Slots are taken on the route's worker thread and given back on the event loop.
        self._lock = threading.Lock()
        self._open = 0
        self._open_by_key: dict[str, int] = {}

    def watched_jobs(self) -> int:
        return len(self._watches)

    def watchers(self) -> int:
        return sum(len(watch.subscribers) for watch in self._watches.values())

    def open_streams(self, key_id: str | None = None) -> int:
        """Streams holding a slot: all of them, or those of one API key."""
        with self._lock:
            return self._open if key_id is None else self._open_by_key.get(key_id, 0)

    def reserve(self, key_id: str | None) -> StreamSlot:
        """A slot for one more stream, or TooManyRequests (429 too_many_streams).

        `key_id` is the API key the request came with; None (auth disabled) counts only
        towards the process's bound. Hand the slot to `stream`, which gives it back.
        """
        with self._lock:
            if self.max_streams is not None and self._open >= self.max_streams:
                raise TooManyRequests(
                    "too_many_streams",
                    f"this server already has {self._open} open event streams, its limit "
                    f"(GRAFT_MAX_STREAMS={self.max_streams}); retry later, or poll "
                    "GET /v1/jobs/{id}/events without Accept: text/event-stream",
                    retry_after=STREAM_RETRY_AFTER_SECONDS,
                )
            if key_id is not None and self.max_streams_per_key is not None:
                held = self._open_by_key.get(key_id, 0)
                if held >= self.max_streams_per_key:
                    raise TooManyRequests(
                        "too_many_streams",
                        f"this API key already has {held} open event streams, the limit per "
                        f"key (GRAFT_MAX_STREAMS_PER_KEY={self.max_streams_per_key}); close "
                        "one first, or poll GET /v1/jobs/{id}/events without "
                        "Accept: text/event-stream",
                        retry_after=STREAM_RETRY_AFTER_SECONDS,
                    )
            self._open += 1
            if key_id is not None:
                self._open_by_key[key_id] = self._open_by_key.get(key_id, 0) + 1
        return StreamSlot(self, key_id)

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

    def stream(self, job_id: str, after: int, slot: StreamSlot | None = None) -> AsyncIterator[str]:
        """SSE text for the job's events after seq `after`, ending with its final status.

        `slot` (from `reserve`) is given back when the stream ends, when its client hangs
        up (the response's task is cancelled), or, should the stream never start, when
        the stream is dropped.
        """
        events = self._follow(job_id, after, slot)
        if slot is not None:
            weakref.finalize(events, slot.release)
        return events

    async def _follow(self, job_id: str, after: int, slot: StreamSlot | None) -> AsyncIterator[str]:
        try:
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
        finally:
            if slot is not None:
                slot.release()

    async def close(self) -> None:
        tasks = [watch.task for watch in self._watches.values() if watch.task is not None]
        self._watches.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
