"""Backpressure: a bounded number of inferences at once and a bounded queue behind them.

Inference runs in worker threads (never on the event loop); this admits at most `workers` of them at a time,
lets at most `queue` more wait, and refuses the rest at once (HTTP 503 with Retry-After) instead of letting
latency grow without bound. `/health` and `/ready` never pass through it, so they answer while every worker is
busy. Streams are admitted separately (`max_streams`): each holds state for its whole life.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


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

    @asynccontextmanager
    async def inference(self) -> AsyncIterator[None]:
        """Hold one worker slot for a whole-file transcription; ServiceBusy if none is free and the queue is full."""
        if self._busy >= self.workers and self._waiting >= self.queue:
            raise ServiceBusy(
                f"all {self.workers} workers are busy and {self._waiting} requests are queued; retry shortly"
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        self._busy += 1
        try:
            yield
        finally:
            self._busy -= 1
            self._slots.release()

    def open_stream(self) -> bool:
        """Count a new stream in; False when `max_streams` are already open."""
        if self.active_streams >= self.max_streams:
            return False
        self.active_streams += 1
        return True

    def close_stream(self) -> None:
        self.active_streams -= 1
