"""BatchingModel: concurrent streams' static chunks run through the wrapped model together (`run_chunks`).

Each stream's `run_chunk` (called from its own worker thread) queues its request and waits on a Future. One
daemon thread owns the wrapped model's chunk path: it takes everything queued (up to `max_batch`), runs it as
one `run_chunks` call and resolves the futures. Continuous batching: while a batch runs, new requests pile up
and form the next batch, so under load batches grow by themselves and an idle server adds only the hand-over.

Waiting for company: when the worker finds fewer requests queued than there are open streams, it may wait for
the others' chunks (a stream has at most one chunk in flight, since run_chunk blocks, so it stops waiting as
soon as every open stream's chunk is there): up to `max_wait_s`, or up to a quarter of what recent batches took
to run if that is longer (at most 50 ms). A batch of a wide model runs for tens of milliseconds or more, and the
streams it served come back one after the other as each one's decoding and websocket work gets its turn on the
GIL; a fixed 2 ms caught few of them (16 closed-loop streams at width 2048, greedy decoding: batches of 7 on
average, 14 audio seconds per second), a quarter of the run time most (12 of 16, 21 audio s/s, and a p95
latency of 0.35 s instead of 0.41, since fewer batches queue behind each other). A narrow model's batches take a few milliseconds, so its wait stays at
`max_wait_s`. Open streams are counted through
`attach_stream()` (StreamSession calls it when it starts and the returned detach when it finishes or is
dropped), so a lone stream never waits, and neither do callers that never attach. Streams that are open but
silent (a websocket between utterances) only cost the others that bounded wait.

Whole-file inference (`run_window`, `run_long`) passes straight through to the wrapped model in the caller's
thread: long windows gain nothing from batching and would hold up streams' chunks. The wrapped model's chunk
path is only called from the worker thread (after `close()`, from callers directly: streams still open at
shutdown finish unbatched).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from app.speech.runtime.base import STATIC_STEPS, AcousticModel, LstmState

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_WAIT_S = 0.002
RUN_TIME_WAIT_FRACTION = 0.25  # of the recent batches' run time, waited for company (module docstring)
RUN_TIME_WAIT_CAP_S = 0.05


@dataclass
class _Request:
    windows: np.ndarray
    length: int
    state: LstmState
    future: Future[tuple[np.ndarray, LstmState]] = field(default_factory=Future)


class BatchingModel(AcousticModel):
    """Wraps an AcousticModel so that concurrent streams' chunks run as batches (see the module docstring)."""

    def __init__(
        self,
        model: AcousticModel,
        *,
        max_batch: int = DEFAULT_MAX_BATCH,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s must not be negative, got {max_wait_s}")
        self.model = model
        self.backend = model.backend
        self.n_cell_dim = model.n_cell_dim
        self.n_classes = model.n_classes
        self.max_steps = model.max_steps
        self.batched_chunks = model.batched_chunks
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self._queue: deque[_Request] = deque()
        self._cond = threading.Condition()
        self._open_streams = 0
        self._closing = False
        self.batches = 0  # run_chunks calls made
        self.chunks = 0  # requests they served
        self.largest_batch = 0
        self._recent_run_s = 0.0  # moving average of run_chunks' duration
        self._thread = threading.Thread(target=self._work, name="stream-batcher", daemon=True)
        self._thread.start()

    # --- AcousticModel -----------------------------------------------------------------------------------

    def run_chunk(self, windows: np.ndarray, length: int, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self._submit([(windows, length, state)])[0].result()

    def run_chunks(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[tuple[np.ndarray, LstmState]]:
        return [future.result() for future in self._submit(requests)]

    def run_window(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self.model.run_window(windows, state)

    def run_last_window(self, windows: np.ndarray, state: LstmState) -> np.ndarray:
        return self.model.run_last_window(windows, state)

    def run_long(self, windows: np.ndarray, state: LstmState) -> tuple[np.ndarray, LstmState]:
        return self.model.run_long(windows, state)

    def attach_stream(self) -> Callable[[], None]:
        with self._cond:
            self._open_streams += 1
        detached = False

        def detach() -> None:
            nonlocal detached
            with self._cond:  # an RLock: safe even from a finalizer that runs while this thread holds it
                if not detached:
                    detached = True
                    self._open_streams -= 1

        return detach

    def describe(self) -> dict[str, object]:
        return {
            **self.model.describe(),
            "stream_batching": {
                "max_batch": self.max_batch,
                "max_wait_ms": self.max_wait_s * 1000.0,
                "batches": self.batches,
                "chunks": self.chunks,
                "mean_batch_size": round(self.chunks / self.batches, 3) if self.batches else 0.0,
                "largest_batch": self.largest_batch,
                "open_streams": self._open_streams,
            },
        }

    # --- lifecycle -----------------------------------------------------------------------------------------

    @property
    def open_streams(self) -> int:
        return self._open_streams

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout: float | None = 10.0) -> None:
        """Run what is queued, stop the worker thread and wait for it; later chunks run unbatched."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout)

    # --- internals -----------------------------------------------------------------------------------------

    def _submit(
        self, requests: Sequence[tuple[np.ndarray, int, LstmState]]
    ) -> list[Future[tuple[np.ndarray, LstmState]]]:
        futures: list[Future[tuple[np.ndarray, LstmState]]] = []
        queued: list[_Request] = []
        for windows, length, state in requests:
            # Checked here so that one caller's bad chunk fails that caller, not the whole batch.
            if windows.shape[0] != STATIC_STEPS or not 0 <= length <= STATIC_STEPS:
                raise ValueError(
                    f"a static chunk is {STATIC_STEPS} windows with 0..16 valid, got {windows.shape}, {length}"
                )
            request = _Request(windows, length, state)
            if length == 0:  # nothing to compute: the state is unchanged
                request.future.set_result((np.zeros((0, self.n_classes), np.float32), state))
            else:
                queued.append(request)
            futures.append(request.future)
        if queued:
            with self._cond:
                closed = self._closing
                if not closed:
                    self._queue.extend(queued)
                    self._cond.notify()
            if closed:  # shut down: run in the caller's thread, unbatched
                self._run(queued)
        return futures

    def _take(self, batch: list[_Request]) -> None:
        while self._queue and len(batch) < self.max_batch:
            batch.append(self._queue.popleft())

    def _work(self) -> None:
        try:
            while True:
                batch: list[_Request] = []
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait()
                    if not self._queue:  # closing and nothing left
                        return
                    self._take(batch)
                    wait = self.wait_s()
                    if wait > 0 and not self._closing:
                        deadline = time.monotonic() + wait
                        while len(batch) < min(self._open_streams, self.max_batch) and not self._closing:
                            remaining = deadline - time.monotonic()
                            if remaining <= 0:
                                break
                            self._cond.wait(remaining)
                            self._take(batch)
                self._run(batch)
        finally:  # normally the queue is empty here; if the thread dies, nobody is left waiting forever
            with self._cond:
                self._closing = True
                stranded = list(self._queue)
                self._queue.clear()
            for request in stranded:
                request.future.set_exception(RuntimeError("the stream batcher stopped"))

    def wait_s(self) -> float:
        """How long a batch short of the open streams' chunks waits for the others (module docstring)."""
        if self.max_wait_s <= 0:
            return 0.0
        return max(self.max_wait_s, min(RUN_TIME_WAIT_CAP_S, RUN_TIME_WAIT_FRACTION * self._recent_run_s))

    def _run(self, batch: list[_Request]) -> None:
        started = time.monotonic()
        try:
            results = self.model.run_chunks([(r.windows, r.length, r.state) for r in batch])
            self._recent_run_s += 0.25 * (
                time.monotonic() - started - self._recent_run_s
            )  # each run weighs 1/4
            if len(results) != len(batch):
                raise RuntimeError(f"run_chunks returned {len(results)} results for {len(batch)} chunks")
        except Exception as exc:
            if len(batch) == 1:
                batch[0].future.set_exception(exc)
            else:  # one stream's failure must not fail the others: run them one by one to find out whose it is
                log.warning("a batch of %d chunks failed (%s); running them one by one", len(batch), exc)
                for request in batch:
                    try:
                        request.future.set_result(
                            self.model.run_chunk(request.windows, request.length, request.state)
                        )
                    except Exception as single:
                        request.future.set_exception(single)
            return
        except BaseException as exc:  # KeyboardInterrupt and the like: every caller gets it, the worker stops
            for request in batch:
                request.future.set_exception(exc)
            raise
        finally:
            with self._cond:
                self.batches += 1
                self.chunks += len(batch)
                self.largest_batch = max(self.largest_batch, len(batch))
        for request, result in zip(batch, results, strict=True):
            request.future.set_result(result)
