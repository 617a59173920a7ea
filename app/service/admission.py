"""Backpressure: a bounded number of inferences at once and a bounded queue behind them.

Inference runs in worker threads (never on the event loop); this admits at most `workers` of them at a time,
lets at most `queue` more wait, and refuses the rest at once (HTTP 503 with Retry-After) instead of letting
latency grow without bound. An upload takes its place before its body is read (app/web/limits.py), so the
queue also bounds the uploads arriving at once. `/health` and `/ready` never pass through it, so they answer while every worker is
busy. Streams are admitted separately (`max_streams`): each holds state for its whole life.
"""

from __future__ import annotations

import asyncio


class ServiceBusy(RuntimeError):
    """Every worker is busy and the queue is full (HTTP 503, Retry-After)."""

    retry_after = 1


class Admission:
    def __init__(self, workers: int, queue: int, max_streams: int) -> None:
        self.workers = workers
        self.queue = queue
        self.max_streams = max_streams
        self._slots = asyncio.Semaphore(workers)
        self._waiting = 0
        self._busy = 0
        self.active_streams = 0

    @property
    def queued(self) -> int:
        return self._waiting

    @property
    def busy(self) -> int:
        return self._busy

    def reserve(self) -> Ticket:
        """Take a place in the queue now (ServiceBusy if none is free); `async with` the ticket to run.

        Separate from running so that an upload is refused before its body is read, and a streamed response
        (SSE) with a 503 before its status line is sent, waiting for its worker inside the response body.
        """
        # Counted together: a place taken before an upload's body is read (app/web/limits.py) waits for no
        # worker yet, but it will, so it must not leave room for `workers` more.
        if self._busy + self._waiting >= self.workers + self.queue:
            raise ServiceBusy(
                f"all {self.workers} workers are busy and {self._waiting} requests are queued; retry shortly"
            )
        self._waiting += 1
        return Ticket(self)

    def open_stream(self) -> bool:
        """Count a new stream in; False when `max_streams` are already open."""
        if self.active_streams >= self.max_streams:
            return False
        self.active_streams += 1
        return True

    def close_stream(self) -> None:
        self.active_streams -= 1


class Ticket:
    """A place in the queue, then a worker slot; `release` is idempotent so every exit path may call it."""

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self._state = "waiting"

    async def __aenter__(self) -> Ticket:
        try:
            await self._admission._slots.acquire()
        except BaseException:  # cancelled while queued (client gone): give the place back
            self.release()
            raise
        self._admission._waiting -= 1
        self._admission._busy += 1
        self._state = "running"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release()

    def release(self) -> None:
        if self._state == "waiting":
            self._admission._waiting -= 1
        elif self._state == "running":
            self._admission._busy -= 1
            self._admission._slots.release()
        self._state = "done"
