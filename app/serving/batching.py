"""Adaptive micro-batching: concurrent requests for one version share one forward pass.

A request that finds its version idle starts a pass at once (an expensive one on the event
loop's next turn, joined only by requests already read): nobody waits for company. Requests
that arrive while a pass runs queue up, and when the pass ends they run together as the next
pass (up to `max_rows` rows), so batches grow with the load by themselves. `max_wait_s` may
hold such a queue a little longer to let it grow; it never delays a request that found the
model idle.

Cheap passes run on the event loop, because handing them to a thread costs more than they
do; expensive ones run on a worker thread, which keeps the loop reading requests (and so
filling the next batch) while PyTorch computes with the GIL released. A cheap pass that finds
the model idle runs at once, in the caller: grouping such passes would cost the lone request
more (a task and a loop turn) than it saves.
"""

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

log = logging.getLogger(__name__)

# Told (rows, requests) after every forward pass, e.g. to record batch sizes as metrics.
# It runs on the event loop and must be quick; its errors are logged and ignored.
PassListener = Callable[[int, int], None]


@dataclass
class _Waiting:
    rows: np.ndarray
    future: "asyncio.Future[np.ndarray]"
    since: float


class Batcher:
    """Runs forward passes for one loaded version, grouping concurrent requests.

    Args:
        forward: rows (n, features) float32 -> outputs with n rows; row i of the output
            depends on row i of the input only.
        enabled: False runs every request as its own pass (no queue).
        max_rows: the most rows one grouped pass takes; a larger request still runs, alone.
        max_wait_s: how long requests queued behind a running pass may be held after it to
            let the next batch grow (0: run them as soon as the model is free).
        executor: where expensive passes run; None runs every pass on the event loop.
        inline_rows: passes of at most this many rows run on the event loop.
        on_pass: told (rows, requests) after every forward pass.
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        *,
        enabled: bool = True,
        max_rows: int = 512,
        max_wait_s: float = 0.0,
        executor: Executor | None = None,
        inline_rows: int = 0,
        on_pass: PassListener | None = None,
    ) -> None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be at least 1, got {max_rows}")
        self._forward = forward
        self.enabled = enabled
        self.max_rows = max_rows
        self.max_wait_s = max_wait_s
        self._executor = executor
        self._inline_rows = inline_rows
        self._on_pass = on_pass
        self._queue: deque[_Waiting] = deque()
        self._queued_rows = 0
        self._busy = False
        self._filled: asyncio.Event | None = None
        self._drainer: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Whether a pass is running or requests are queued."""
        return self._busy

    def _notify(self, rows: int, requests: int) -> None:
        if self._on_pass is None:
            return
        try:
            self._on_pass(rows, requests)
        except Exception:
            log.exception("pass listener %r failed", self._on_pass)

    async def submit(self, rows: np.ndarray) -> np.ndarray:
        """This request's outputs, computed alone or in a pass shared with others."""
        if not self.enabled:
            return await self._run(rows, requests=1)
        if not self._busy and self._runs_inline(len(rows)):
            # Idle, and cheaper than any scheduling: run it now. Nothing can queue behind
            # a pass that holds the loop, so cheap passes are never grouped.
            return await self._run(rows, requests=1)
        loop = asyncio.get_running_loop()
        waiting = _Waiting(rows, loop.create_future(), loop.time())
        self._queue.append(waiting)
        self._queued_rows += len(rows)
        if self._filled is not None and self._queued_rows >= self.max_rows:
            self._filled.set()
        if not self._busy:
            # The pass starts on the event loop's next turn rather than right here, so the
            # requests that the server has already read in this turn join it.
            self._busy = True
            self._drainer = loop.create_task(self._drain())
        return await waiting.future

    def _runs_inline(self, rows: int) -> bool:
        return self._executor is None or rows <= self._inline_rows

    async def _run(self, rows: np.ndarray, requests: int) -> np.ndarray:
        if self._runs_inline(len(rows)):
            out = self._forward(rows)
        else:
            loop = asyncio.get_running_loop()
            out = await loop.run_in_executor(self._executor, self._forward, rows)
        self._notify(len(rows), requests)
        return out

    async def _drain(self) -> None:
        try:
            first = True
            while self._queue:
                # Only a queue that formed behind a running pass is ever held.
                if not first and self.max_wait_s > 0 and self._queued_rows < self.max_rows:
                    await self._hold()
                first = False
                batch = self._take()
                if not batch:
                    continue
                rows = batch[0].rows if len(batch) == 1 else np.concatenate([w.rows for w in batch])
                try:
                    out = await self._run(rows, requests=len(batch))
                except Exception as exc:
                    for waiting in batch:
                        if not waiting.future.done():
                            waiting.future.set_exception(exc)
                    continue
                start = 0
                for waiting in batch:
                    end = start + len(waiting.rows)
                    if not waiting.future.done():  # its caller may have gone away
                        waiting.future.set_result(out[start:end])
                    start = end
        finally:
            self._busy = False
            self._drainer = None

    async def _hold(self) -> None:
        """Wait until the queue fills max_rows or its oldest request has waited max_wait_s."""
        loop = asyncio.get_running_loop()
        remaining = self._queue[0].since + self.max_wait_s - loop.time()
        if remaining <= 0:
            return
        self._filled = asyncio.Event()
        try:
            await asyncio.wait_for(self._filled.wait(), remaining)
        except TimeoutError:
            pass
        finally:
            self._filled = None

    def _take(self) -> list[_Waiting]:
        """Queued requests, oldest first, up to max_rows rows (at least one request)."""
        batch: list[_Waiting] = []
        rows = 0
        while self._queue:
            waiting = self._queue[0]
            if batch and rows + len(waiting.rows) > self.max_rows:
                break
            self._queue.popleft()
            self._queued_rows -= len(waiting.rows)
            if waiting.future.done():  # cancelled while queued
                continue
            batch.append(waiting)
            rows += len(waiting.rows)
        return batch
